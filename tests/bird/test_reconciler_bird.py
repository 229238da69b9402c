"""The reconciler with a real BIRD: a config BIRD rejects is reported on the Node, the
previous one stays live, routing goes on, and the next pass retries."""

from __future__ import annotations

import ipaddress
import pathlib
from collections.abc import Callable

import pytest

from flock.adapters.bird import BirdControl, render_bird_conf
from flock.adapters.store import AllocationStore
from flock.core.birdview import bird_view
from flock.core.podcache import PodCache
from flock.metrics import Metrics
from flock.reconciler import Reconciler
from flock.testing import FakeRoutes, RecordingEvents
from tests.support import birdlab
from tests.support.config import agent_config
from tests.unit.factories import alloc, pod_body

pytestmark = [pytest.mark.bird, pytest.mark.netns]


async def test_a_template_bird_rejects_yields_bird_reload_failed_and_the_old_config_stays(
        make_netns: Callable[[str], str], birds: birdlab.Birds, tmp_path: pathlib.Path) -> None:
    before = "router id 192.0.2.2;\nprotocol device {}\n"
    daemon = birds.start(make_netns("node"), before)
    node_config = agent_config()
    # An operator's template that renders something BIRD cannot parse.
    broken = tmp_path / "bird.conf.j2"
    broken.write_text('{% include "_protocols.j2" %}\nprotocol bgp broken { neighbor ; }\n')
    templates: dict[str, pathlib.Path | None] = {"template": broken}  # None: flock's own

    def render() -> str:
        view = bird_view(config=node_config, pod_cidrs=node_config.pod_cidrs or ())
        return render_bird_conf(view, templates["template"])

    store = AllocationStore(tmp_path / "state")
    await store.load()
    await store.put(alloc("web-1", anycast=("198.51.100.10",)))
    pods = PodCache("node-a")
    pods.observe("ADDED", pod_body("web-1", anycast="198.51.100.10"))
    events = RecordingEvents()
    routes = FakeRoutes()
    reconciler = Reconciler(config=node_config, store=store, pods=pods, routes=routes,
                            bird=BirdControl(config_path=daemon.config_path, socket=daemon.socket, timeout=10),
                            render_bird=render, events=events, metrics=Metrics())
    for _ in range(3):
        await reconciler.reconcile()

    failures = [e for e in events.events if e.reason == "BirdReloadFailed"]
    assert len(failures) == 1, "one Event per distinct failure, not one per pass"
    assert failures[0].type == "Warning" and failures[0].involved.kind == "Node"
    assert "rejected the new config" in failures[0].message
    assert daemon.config_path.read_text() == before, "the previous config stays in place"
    assert daemon.running() and "flock_kernel_v4" not in daemon.birdc("show", "protocols")
    assert ipaddress.ip_address("198.51.100.10") in routes.table, "routing goes on meanwhile"

    templates["template"] = None  # the operator fixes the template: the next pass applies it
    await reconciler.reconcile()
    assert "flock_kernel_v4" in daemon.config_path.read_text()
    assert "flock_kernel_v4" in daemon.birdc("show", "protocols")
    calls = daemon.config_path.stat().st_mtime_ns
    await reconciler.reconcile()
    assert daemon.config_path.stat().st_mtime_ns == calls, "applied once, not per pass"
