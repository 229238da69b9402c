"""A tick with nothing changed costs nothing: no resolve, no render, no netlink, no Events;
and pods coming and going never render bird.conf again."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from flock.adapters.store import AllocationStore
from flock.core.podcache import PodCache
from flock.metrics import Metrics
from flock.reconciler import Reconciler
from flock.testing import FakeBird, FakeRoutes, RecordingEvents
from tests.support.config import agent_config
from tests.unit.factories import alloc, pod_body


class CountingRender:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "# bird.conf\n"


@dataclasses.dataclass
class Parts:
    reconciler: Reconciler
    routes: FakeRoutes
    bird: FakeBird
    render: CountingRender
    pods: PodCache


@pytest.fixture
async def parts(tmp_path: pathlib.Path) -> Parts:
    store = AllocationStore(tmp_path)
    await store.load()
    pods = PodCache("node-a")
    routes, bird, render = FakeRoutes(), FakeBird(), CountingRender()
    reconciler = Reconciler(config=agent_config(), store=store, pods=pods, routes=routes, bird=bird,
                            render_bird=render, events=RecordingEvents(), metrics=Metrics())
    await store.put(alloc("web-1", dev="flock00000001"))
    pods.observe("ADDED", pod_body("web-1", uid="", anycast="198.51.100.10"))
    return Parts(reconciler, routes, bird, render, pods)


async def test_a_quiet_tick_resolves_renders_and_writes_nothing(parts: Parts) -> None:
    reconciler, routes, bird, render, pods = parts.reconciler, parts.routes, parts.bird, parts.render, parts.pods
    await reconciler.reconcile(trigger="start")
    assert routes.writes == 1 and render.calls == 1
    for _ in range(5):
        await reconciler.reconcile(trigger="tick")
    assert (routes.writes, routes.dumps, render.calls, bird.calls) == (1, 0, 1, 1)
    assert reconciler.passes == 6, "a skipped tick still counts as a pass (liveness)"

    pods.observe("MODIFIED", pod_body("web-1", uid="", ready=False, anycast="198.51.100.10"))
    await reconciler.reconcile(trigger="pod")
    assert routes.table == {} and render.calls == 1, "withdrawn by a re-tag: bird.conf untouched"


async def test_ticks_keep_retrying_while_bird_fails_and_a_full_view_still_repairs_drift(parts: Parts) -> None:
    reconciler, routes, bird = parts.reconciler, parts.routes, parts.bird
    bird.unavailable = True
    await reconciler.reconcile(trigger="start")
    await reconciler.reconcile(trigger="tick")
    await reconciler.reconcile(trigger="tick")
    assert bird.calls == 3, "not settled: every tick tries BIRD again"
    bird.unavailable = False
    await reconciler.reconcile(trigger="tick")
    assert bird.applied != [] and bird.calls == 4
    await reconciler.reconcile(trigger="tick")
    assert bird.calls == 4, "settled again: quiet"

    routes.table.clear()  # a route deleted by hand
    await reconciler.reconcile(trigger="tick", full_view=True)
    assert routes.table != {}, "the periodic full view repairs it"


async def test_pods_coming_and_going_never_render_bird_conf_again(parts: Parts) -> None:
    reconciler, routes, render, pods = parts.reconciler, parts.routes, parts.render, parts.pods
    await parts.reconciler.store.put(alloc("web-2", ips=("192.0.2.20", "2001:db8::20"), dev="flock00000002"))
    pods.observe("ADDED", pod_body("web-2", uid="", anycast="198.51.100.10"))
    await reconciler.reconcile(trigger="start")
    assert render.calls == 1 and len(next(iter(routes.table.values()))) == 2

    pods.observe("MODIFIED", pod_body("web-2", uid="", ready=False, anycast="198.51.100.10"))
    await reconciler.reconcile(trigger="pod")
    assert len(next(iter(routes.table.values()))) == 1, "web-2 left the multipath route"
    pods.observe("MODIFIED", pod_body("web-1", uid="", ready=False, anycast="198.51.100.10"))
    await reconciler.reconcile(trigger="pod")
    assert routes.table == {} and len(routes.withdrawn) == 1
    assert render.calls == 1, "bird.conf depends on peers, pools and pod CIDRs only"


async def test_a_pass_tells_only_the_pods_it_touched_and_still_tells_them_everything(parts: Parts) -> None:
    reconciler, pods = parts.reconciler, parts.pods
    events = reconciler.events
    assert isinstance(events, RecordingEvents)
    await reconciler.store.put(alloc("web-2", ips=("192.0.2.20", "2001:db8::20"), anycast=("198.51.100.20",),
                                     dev="flock00000002"))
    pods.observe("ADDED", pod_body("web-2", uid="", anycast="198.51.100.20"))
    await reconciler.reconcile(trigger="start")
    assert sorted(e.involved.name for e in events.events) == ["web-1", "web-2"]

    events.events.clear()
    pods.observe("MODIFIED", pod_body("web-2", uid="", ready=False, anycast="198.51.100.20"))
    await reconciler.reconcile(trigger="pod")
    assert [(e.involved.name, e.reason) for e in events.events] == [("web-2", "AnycastWithdrawn")]

    events.events.clear()
    parts.routes.fail[next(iter(parts.routes.table))] = "refused"  # web-1's withdrawal fails
    pods.observe("MODIFIED", pod_body("web-1", uid="", ready=False, anycast="198.51.100.10"))
    await reconciler.reconcile(trigger="pod")
    assert events.events == [], "nothing happened yet: nothing to tell"
    parts.routes.fail.clear()  # the kernel takes it: the tick's pass withdraws, and says so
    await reconciler.reconcile(trigger="tick")
    assert [(e.involved.name, e.reason) for e in events.events] == [("web-1", "AnycastWithdrawn")]
