"""The reconcile pass with in-memory adapters: ordering, quiet passes, events, failures."""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
from collections.abc import Sequence

import pytest

from flock.adapters.bird import FakeBird
from flock.adapters.kube import RecordingEvents
from flock.adapters.metrics import Metrics
from flock.adapters.netlink import FakeRoutes
from flock.adapters.store import AllocationStore
from flock.core.model import IPAddress, Nexthop
from flock.core.podcache import PodCache
from flock.core.routediff import RouteEdit
from flock.errors import RouteError
from flock.reconciler import Reconciler, RepeatedFailure
from tests.unit.factories import alloc, config, pod_body

A4 = ipaddress.ip_address("198.51.100.10")
A6 = ipaddress.ip_address("2001:db8:100::10")


class Recorder:
    """Wraps the fakes so a test can see the order of kernel and BIRD operations."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.routes = FakeRoutes()
        self.bird = FakeBird()

    async def dump(self) -> dict[IPAddress, tuple[Nexthop, ...]]:
        return await self.routes.dump()

    async def apply(self, edits: Sequence[RouteEdit]) -> list[RouteError]:
        self.log.extend(str(e) for e in edits)
        return await self.routes.apply(edits)

    async def bird_apply(self, text: str) -> bool:
        changed = await self.bird.apply(text)
        if changed:
            self.log.append("bird: " + ",".join(line.strip() for line in text.splitlines()
                                                if line.strip().startswith("active ")))
        return changed


class BirdSide:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def apply(self, text: str) -> bool:
        return await self.recorder.bird_apply(text)


def render(anycast: frozenset[IPAddress]) -> str:
    return "".join(f"active {a}\n" for a in sorted(anycast, key=lambda a: (a.version, int(a))))


@pytest.fixture
async def node(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    store = AllocationStore(tmp_path)
    await store.load()
    recorder = Recorder()
    events = RecordingEvents()
    pods = PodCache("node-a")
    reconciler = Reconciler(config=config(), store=store, pods=pods, routes=recorder,
                            bird=BirdSide(recorder), render_bird=render, events=events,
                            metrics=Metrics())
    return store, pods, recorder, events, reconciler


async def add_pod(store: AllocationStore, pods: PodCache, name: str, ip4: str, ip6: str,
                  ready: bool = True, anycast: tuple[str, ...] = ("198.51.100.10", "2001:db8:100::10"),
                  ) -> None:
    await store.put(alloc(name, ips=(ip4, ip6), anycast=anycast, uid=f"uid-{name}", dev=f"flock{name[-1]:0>8}"))
    pods.observe("ADDED", pod_body(name, ready=ready, anycast=",".join(anycast)))


async def test_ready_pod_is_routed_then_advertised_and_announced(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()
    assert recorder.log == [
        "add 198.51.100.10/32 via 192.0.2.11 dev flock00000001",
        "add 2001:db8:100::10/128 via 2001:db8::11 dev flock00000001",
        "bird: active 198.51.100.10,active 2001:db8:100::10",
    ]
    # One Event for the pod's anycast IPs that changed together in the pass.
    assert [(e.reason, e.involved.name, e.message) for e in events.events] == [
        ("AnycastAdvertised", "web-1", "2 anycast IPs advertised from node-a: pod ready; "
         "198.51.100.10/32 (1 next hop on this node), 2001:db8:100::10/128 (1 next hop on this node)")]


async def test_quiet_pass_writes_nothing_and_posts_nothing(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()
    before_log, before_events, before_calls = list(recorder.log), list(events.events), recorder.bird.calls
    for _ in range(3):
        await reconciler.reconcile()
    assert recorder.log == before_log
    assert events.events == before_events
    assert recorder.bird.calls == before_calls


async def test_terminating_pod_leaves_the_nexthop_set(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await add_pod(store, pods, "web-2", "192.0.2.12", "2001:db8::12", anycast=("198.51.100.10",))
    await reconciler.reconcile()
    assert len(recorder.routes.table[A4]) == 2
    recorder.log.clear()
    events.events.clear()

    pods.observe("MODIFIED", pod_body("web-1", ready=True, terminating=True, anycast="198.51.100.10"))
    await reconciler.reconcile()
    assert recorder.log == ["replace 198.51.100.10/32 via 192.0.2.12 dev flock00000002"]  # no BIRD reload
    assert [(e.reason, e.message) for e in events.events] == [
        ("AnycastWithdrawn", "198.51.100.10/32 withdrawn from node-a: pod terminating; 1 next hop left")]


async def test_last_pod_leaving_is_withdrawn_from_bird_before_the_route_goes(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await reconciler.reconcile()
    recorder.log.clear()
    pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
    await reconciler.reconcile()
    assert recorder.log == ["bird: ", "delete 198.51.100.10/32"]
    assert A4 not in recorder.routes.table
    assert "pod not ready; no next hop left, node-a no longer advertises it" in events.events[-1].message


async def test_rejected_bird_config_keeps_the_route_and_reports_once(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await reconciler.reconcile()
    recorder.bird.reject = "bird.conf:3:1 syntax error"
    pods.observe("DELETED", pod_body("web-1"))
    for _ in range(3):
        await reconciler.reconcile()
    # BIRD still announces the prefix, so the node keeps routing it.
    assert A4 in recorder.routes.table
    failures = [e for e in events.events if e.reason == "BirdReloadFailed"]
    assert len(failures) == 1 and failures[0].involved.kind == "Node" and failures[0].type == "Warning"
    assert "syntax error" in failures[0].message
    assert recorder.bird.calls == 4  # the first pass, then one retry per pass

    recorder.bird.reject = None
    await reconciler.reconcile()
    assert A4 not in recorder.routes.table


async def test_a_withdrawal_waiting_for_bird_is_announced_only_once_it_happened(  # type: ignore[no-untyped-def]
    node, caplog: pytest.LogCaptureFixture,
) -> None:
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await reconciler.reconcile()
    events.events.clear()
    recorder.bird.unavailable = True
    pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
    with caplog.at_level("INFO", logger="flock.reconciler"):
        for _ in range(5):
            await reconciler.reconcile()
    assert A4 in recorder.routes.table, "BIRD may still announce it: the route stays"
    assert [e.reason for e in events.events] == ["BirdReloadFailed"], "no AnycastWithdrawn before it happens"
    failures = [r for r in caplog.records if "BIRD reload failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelname == "ERROR", "logged once, not every pass"

    caplog.clear()
    recorder.bird.unavailable = False
    with caplog.at_level("INFO", logger="flock.reconciler"):
        await reconciler.reconcile()
    assert A4 not in recorder.routes.table
    assert [e.reason for e in events.events] == ["BirdReloadFailed", "AnycastWithdrawn"]
    assert "no next hop left, node-a no longer advertises it" in events.events[-1].message
    assert [r.getMessage() for r in caplog.records if "BIRD reload failed" in r.getMessage()] == [
        "BIRD reload failed, the previous config stays live: cleared"]


def test_a_lasting_failure_is_logged_at_most_once_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failure = RepeatedFailure("BIRD reload failed", every=60, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="flock.reconciler"):
        assert failure.failed("socket gone") is True
        for second in range(1, 150):  # one pass a second
            now[0] = float(second)
            assert failure.failed("socket gone") is False
        assert failure.failed("syntax error") is True  # another failure: at once
        failure.cleared()
        failure.cleared()
    assert [r.getMessage() for r in caplog.records] == [
        "BIRD reload failed: socket gone",
        "BIRD reload failed (still, 60 more times): socket gone",
        "BIRD reload failed (still, 60 more times): socket gone",
        "BIRD reload failed: syntax error",
        "BIRD reload failed: cleared",
    ]


async def test_rejected_anycast_is_reported_once_and_never_routed(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11", anycast=("203.0.113.7", "198.51.100.10"))
    for _ in range(3):
        await reconciler.reconcile()
    rejected = [e for e in events.events if e.reason == "AnycastRejected"]
    assert len(rejected) == 1 and rejected[0].type == "Warning"
    assert "203.0.113.7 is outside the anycast pools" in rejected[0].message
    assert set(recorder.routes.table) == {A4}


async def test_failed_route_edit_takes_a_full_view_and_other_routes_still_land(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    recorder.routes.fail[A6] = "No such device (netlink 19)"
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()
    assert set(recorder.routes.table) == {A4}
    assert "2001:db8:100::10" not in recorder.log[-1]  # never advertised without a route
    assert [e.message.split()[0] for e in events.events if e.reason == "AnycastAdvertised"] == ["198.51.100.10/32"]
    del recorder.routes.fail[A6]
    await reconciler.reconcile()
    assert set(recorder.routes.table) == {A4, A6}


async def test_restart_adopts_the_kernel_and_writes_nothing(node, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()

    restarted = Reconciler(config=reconciler.config, store=store, pods=pods, routes=recorder,
                           bird=BirdSide(recorder), render_bird=render, events=events, metrics=Metrics())
    recorder.log.clear()
    events.events.clear()
    await restarted.adopt()
    await restarted.reconcile()
    assert recorder.log == []
    assert events.events == []


async def test_drift_is_repaired_on_the_full_view(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, _, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()
    del recorder.routes.table[A4]  # someone ran `ip route del`
    await reconciler.reconcile()
    assert A4 not in recorder.routes.table  # between full views the agent trusts its own record
    await reconciler.reconcile(full_view=True)
    assert A4 in recorder.routes.table


async def test_a_burst_of_wakeups_coalesces_into_a_few_passes(node) -> None:  # type: ignore[no-untyped-def]
    reconciler = node[-1]
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.sleep(0.01)
        start = reconciler.passes
        for i in range(1000):
            reconciler.wake("pod")
            if i % 100 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        assert 1 <= reconciler.passes - start <= 15
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_annotation_edits_on_a_running_pod(node) -> None:  # type: ignore[no-untyped-def]
    store, pods, recorder, events, reconciler = node
    await add_pod(store, pods, "web-1", "192.0.2.11", "2001:db8::11")
    await reconciler.reconcile()
    recorder.log.clear()
    events.events.clear()

    # kubectl annotate --overwrite: one IP taken off, one added.
    pods.observe("MODIFIED", pod_body("web-1", anycast="2001:db8:100::10, 198.51.100.77"))
    for _ in range(3):
        await reconciler.reconcile()
    assert recorder.log == ["bird: active 2001:db8:100::10", "delete 198.51.100.10/32"]
    assert [(e.type, e.reason, e.message) for e in events.events] == [
        ("Normal", "AnycastWithdrawn", "198.51.100.10/32 withdrawn from node-a: pod no longer in its "
         "flock.io/anycast annotation; no next hop left, node-a no longer advertises it"),
        ("Warning", "AnycastRejected", "198.51.100.77 not routed: added to flock.io/anycast after the pod's "
         "network was set up, so it is not on the pod's lo; it takes effect when the pod is recreated"),
    ]
