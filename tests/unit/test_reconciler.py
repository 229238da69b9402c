"""The reconcile pass with in-memory adapters: ordering, quiet passes, events, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import pathlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock.adapters.store import AllocationStore
from flock.core.model import host_prefix
from flock.core.podcache import PodCache
from flock.core.routediff import KernelRoutes, RouteEdit
from flock.errors import RouteError
from flock.metrics import Metrics
from flock.reconciler import Reconciler, RepeatedFailure, address_text, prefix_text
from flock.testing import FakeBird, FakeRoutes, RecordingEvents
from tests.support.config import agent_config
from tests.unit.factories import alloc, pod_body

A4 = ipaddress.ip_address("198.51.100.10")
A6 = ipaddress.ip_address("2001:db8:100::10")


class Recorder:
    """Wraps the fakes so a test can see the order of kernel and BIRD operations."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.routes = FakeRoutes()
        self.bird = FakeBird()

    async def dump(self) -> KernelRoutes:
        return await self.routes.dump()

    async def apply(self, edits: Sequence[RouteEdit]) -> list[RouteError]:
        self.log.extend(str(e) for e in edits)
        return await self.routes.apply(edits)

    async def bird_apply(self, text: str) -> bool:
        changed = await self.bird.apply(text)
        if changed:
            self.log.append("bird: configured")
        return changed


class BirdSide:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def apply(self, text: str) -> bool:
        return await self.recorder.bird_apply(text)


def render() -> str:
    return "# node-a's bird.conf: BIRD learns the anycast routes from the kernel\n"


LINGER = 0.1  # withdrawnLingerSeconds of these tests


@dataclasses.dataclass
class Node:
    """One node's reconciler over in-memory adapters, and those adapters."""

    store: AllocationStore
    pods: PodCache
    recorder: Recorder
    events: RecordingEvents
    reconciler: Reconciler

    async def add_pod(self, name: str, ip4: str, ip6: str, ready: bool = True,
                      anycast: tuple[str, ...] = ("198.51.100.10", "2001:db8:100::10")) -> None:
        """A committed allocation for pod ``name`` (veth ``flock0000000<last char>``) and its watch event."""
        await self.store.put(alloc(name, ips=(ip4, ip6), anycast=anycast, uid=f"uid-{name}",
                                   dev=f"flock{name[-1]:0>8}"))
        self.pods.observe("ADDED", pod_body(name, ready=ready, anycast=",".join(anycast)))


@pytest.fixture
async def node(tmp_path: pathlib.Path) -> Node:
    store = AllocationStore(tmp_path)
    await store.load()
    recorder = Recorder()
    events = RecordingEvents()
    pods = PodCache("node-a")
    reconciler = Reconciler(config=agent_config(withdrawnLingerSeconds=LINGER), store=store, pods=pods, routes=recorder,
                            bird=BirdSide(recorder), render_bird=render, events=events,
                            metrics=Metrics())
    return Node(store, pods, recorder, events, reconciler)


async def test_ready_pod_is_routed_and_so_advertised_and_announced(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()
    assert node.recorder.log == [
        "bird: configured",  # once: BIRD learns the routes from the kernel
        "add 198.51.100.10/32 via 192.0.2.11 dev flock00000001",
        "add 2001:db8:100::10/128 via 2001:db8::11 dev flock00000001",
    ]
    # One Event for the pod's anycast IPs that changed together in the pass.
    assert [(e.reason, e.involved.name, e.message) for e in node.events.events] == [
        ("AnycastAdvertised", "web-1", "2 anycast IPs advertised from node-a: pod ready; "
         "198.51.100.10/32 (1 next hop on this node), 2001:db8:100::10/128 (1 next hop on this node)")]


async def test_quiet_pass_writes_nothing_and_posts_nothing(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()
    before = (list(node.recorder.log), list(node.events.events), node.recorder.bird.calls)
    for _ in range(3):
        await node.reconciler.reconcile()
    assert (node.recorder.log, node.events.events, node.recorder.bird.calls) == before


async def test_terminating_pod_leaves_the_nexthop_set(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.add_pod("web-2", "192.0.2.12", "2001:db8::12", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    assert len(node.recorder.routes.table[A4]) == 2
    node.recorder.log.clear()
    node.events.events.clear()

    node.pods.observe("MODIFIED", pod_body("web-1", ready=True, terminating=True, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    assert node.recorder.log == ["replace 198.51.100.10/32 via 192.0.2.12 dev flock00000002"]  # no BIRD reload
    assert [(e.reason, e.message) for e in node.events.events] == [
        ("AnycastWithdrawn", "198.51.100.10/32 withdrawn from node-a: pod terminating; 1 next hop left")]


async def test_last_pod_leaving_is_withdrawn_by_a_re_tag_and_its_route_deleted_after_the_linger(
        node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    # Withdrawn from BGP (BIRD does not learn the re-tagged route), still forwarding; no reload.
    assert node.recorder.log == ["withdraw 198.51.100.10/32 via 192.0.2.11 dev flock00000001"]
    assert A4 not in node.recorder.routes.table and A4 in node.recorder.routes.withdrawn
    assert "pod not ready; no next hop left, node-a no longer advertises it" in node.events.events[-1].message
    await node.reconciler.reconcile()
    assert len(node.recorder.log) == 1, "nothing more before the linger is over"

    await asyncio.sleep(LINGER * 1.5)
    events = len(node.events.events)
    await node.reconciler.reconcile(trigger="tick")  # a tick must not skip an ended linger
    assert node.recorder.log[1:] == ["delete 198.51.100.10/32 (withdrawn)"]
    assert A4 not in node.recorder.routes.withdrawn
    assert len(node.events.events) == events, "the withdrawal was told once, when it happened"


async def test_the_run_loop_wakes_when_a_linger_ends(node: Node) -> None:
    node.reconciler.config = dataclasses.replace(node.reconciler.config, tick_seconds=60)
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    task = asyncio.create_task(node.reconciler.run())
    try:
        await asyncio.wait_for(node.reconciler.next_pass("test"), timeout=10)
        node.pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
        await asyncio.wait_for(node.reconciler.next_pass("test"), timeout=10)
        assert A4 in node.recorder.routes.withdrawn
        for _ in range(100):
            if A4 not in node.recorder.routes.withdrawn:
                break
            await asyncio.sleep(LINGER)
        assert A4 not in node.recorder.routes.withdrawn, "deleted without waiting for a 60 s tick"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_re_tag_that_fails_deletes_the_route_instead(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.recorder.routes.fail[A4] = 19  # ENODEV: the pod's veth is gone
    node.pods.observe("DELETED", pod_body("web-1"))
    await node.reconciler.reconcile()
    assert node.recorder.log == ["withdraw 198.51.100.10/32 via 192.0.2.11 dev flock00000001",
                                 "delete 198.51.100.10/32"]


async def test_a_withdrawn_route_wanted_again_is_advertised_again_and_not_deleted(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    node.pods.observe("MODIFIED", pod_body("web-1", ready=True, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    await asyncio.sleep(LINGER * 1.5)
    await node.reconciler.reconcile()
    assert node.recorder.log[-1] == "replace 198.51.100.10/32 via 192.0.2.11 dev flock00000001"
    assert A4 in node.recorder.routes.table and A4 not in node.recorder.routes.withdrawn
    assert [e.reason for e in node.events.events] == ["AnycastAdvertised", "AnycastWithdrawn", "AnycastAdvertised"]


async def test_a_config_bird_refuses_is_reported_once_retried_and_routing_goes_on(
    node: Node, caplog: pytest.LogCaptureFixture,
) -> None:
    node.recorder.bird.reject = "bird.conf:3:1 syntax error"
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    with caplog.at_level("INFO", logger="flock.reconciler"):
        for _ in range(3):
            await node.reconciler.reconcile(trigger="tick")
    assert A4 in node.recorder.routes.table
    failures = [e for e in node.events.events if e.reason == "BirdReloadFailed"]
    assert len(failures) == 1 and failures[0].involved.kind == "Node" and failures[0].type == "Warning"
    assert "syntax error" in failures[0].message
    assert node.recorder.bird.calls == 3, "retried every pass, ticks included"
    logged = [r for r in caplog.records if "BIRD reload failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "ERROR", "logged once, not every pass"

    node.recorder.bird.reject = None
    node.recorder.bird.unavailable = True  # a new failure: reported as such
    await node.reconciler.reconcile()
    assert [e.reason for e in node.events.events if e.reason == "BirdReloadFailed"] == ["BirdReloadFailed"] * 2
    assert "unreachable" in node.events.events[-1].message

    caplog.clear()
    node.recorder.bird.unavailable = False
    with caplog.at_level("INFO", logger="flock.reconciler"):
        for _ in range(3):
            await node.reconciler.reconcile()
    assert node.recorder.bird.applied == [render()] and node.recorder.bird.calls == 5, "applied once, then left alone"
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


async def test_rejected_anycast_is_reported_once_and_never_routed(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("203.0.113.7", "198.51.100.10"))
    for _ in range(3):
        await node.reconciler.reconcile()
    rejected = [e for e in node.events.events if e.reason == "AnycastRejected"]
    assert len(rejected) == 1 and rejected[0].type == "Warning"
    assert "203.0.113.7 is outside the anycast pools" in rejected[0].message
    assert set(node.recorder.routes.table) == {A4}


async def test_failed_route_edit_takes_a_full_view_and_other_routes_still_land(node: Node) -> None:
    node.recorder.routes.fail[A6] = "No such device (netlink 19)"
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()
    assert set(node.recorder.routes.table) == {A4}
    assert [e.message.split()[0] for e in node.events.events if e.reason == "AnycastAdvertised"] == ["198.51.100.10/32"]
    del node.recorder.routes.fail[A6]
    await node.reconciler.reconcile()
    assert set(node.recorder.routes.table) == {A4, A6}


async def test_restart_adopts_the_kernel_and_writes_nothing(node: Node, tmp_path: pathlib.Path) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()

    restarted = Reconciler(config=node.reconciler.config, store=node.store, pods=node.pods, routes=node.recorder,
                           bird=BirdSide(node.recorder), render_bird=render, events=node.events, metrics=Metrics())
    node.recorder.log.clear()
    node.events.events.clear()
    await restarted.adopt()
    await restarted.reconcile()
    assert node.recorder.log == []
    assert node.events.events == []


async def test_a_restart_mid_linger_deletes_the_withdrawn_route_after_a_linger(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.pods.observe("MODIFIED", pod_body("web-1", ready=False, anycast="198.51.100.10"))
    await node.reconciler.reconcile()

    restarted = Reconciler(config=node.reconciler.config, store=node.store, pods=node.pods, routes=node.recorder,
                           bird=BirdSide(node.recorder), render_bird=render, events=node.events, metrics=Metrics())
    node.recorder.log.clear()
    await restarted.adopt()
    await restarted.reconcile()
    assert node.recorder.log == []
    await asyncio.sleep(LINGER * 1.5)
    await restarted.reconcile()
    assert node.recorder.log == ["delete 198.51.100.10/32 (withdrawn)"]


async def test_drift_is_repaired_on_the_full_view(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()
    del node.recorder.routes.table[A4]  # someone ran `ip route del`
    await node.reconciler.reconcile()
    assert A4 not in node.recorder.routes.table  # between full views the agent trusts its own record
    await node.reconciler.reconcile(full_view=True)
    assert A4 in node.recorder.routes.table


async def test_a_burst_of_wakeups_coalesces_into_a_few_passes(node: Node) -> None:
    reconciler = node.reconciler
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.wait_for(reconciler.next_pass("test"), timeout=10)  # the loop runs
        start = reconciler.passes
        for i in range(1000):
            reconciler.wake("pod")
            if i % 100 == 0:
                await asyncio.sleep(0)  # let the loop run between bursts
        # Once a pass that started after the burst has ended, every wake-up has been served.
        await asyncio.wait_for(reconciler.next_pass("test"), timeout=10)
        assert 1 <= reconciler.passes - start <= 15
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_annotation_edits_on_a_running_pod(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11")
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.events.events.clear()

    # kubectl annotate --overwrite: one IP taken off, one added.
    node.pods.observe("MODIFIED", pod_body("web-1", anycast="2001:db8:100::10, 198.51.100.77"))
    for _ in range(3):
        await node.reconciler.reconcile()
    assert node.recorder.log == ["withdraw 198.51.100.10/32 via 192.0.2.11 dev flock00000001"]
    assert [(e.type, e.reason, e.message) for e in node.events.events] == [
        ("Normal", "AnycastWithdrawn", "198.51.100.10/32 withdrawn from node-a: pod no longer in its "
         "flock.io/anycast annotation; no next hop left, node-a no longer advertises it"),
        ("Warning", "AnycastRejected", "198.51.100.77 not routed: added to flock.io/anycast after the pod's "
         "network was set up, so it is not on the pod's lo; it takes effect when the pod is recreated"),
    ]


async def test_the_last_ready_replica_terminating_is_kept_as_a_last_resort_until_it_is_not_ready(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.events.events.clear()

    node.pods.observe("MODIFIED", pod_body("web-1", terminating=True, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    assert node.recorder.log == ["replace 198.51.100.10/32 via 192.0.2.11 dev flock00000001 (last resort)"]
    assert A4 in node.recorder.routes.last_resort
    assert [(e.reason, e.message) for e in node.events.events] == [
        ("AnycastLastResort", "198.51.100.10/32 kept as a last resort on node-a: pod terminating and no ready "
         "replica left on node-a; 1 next hop, advertised with the AS path prepended 3 times")]

    # A new ready replica takes over: the route is an ordinary one again, to it alone.
    await node.add_pod("web-2", "192.0.2.12", "2001:db8::12", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    assert node.recorder.log[-1] == "replace 198.51.100.10/32 via 192.0.2.12 dev flock00000002"
    assert A4 not in node.recorder.routes.last_resort
    assert [(e.reason, e.involved.name, e.message) for e in node.events.events[1:]] == [
        ("AnycastWithdrawn", "web-1", "198.51.100.10/32 withdrawn from node-a: pod terminating; 1 next hop left"),
        ("AnycastAdvertised", "web-2", "198.51.100.10/32 advertised from node-a: pod ready; 1 next hop on this node")]


async def test_a_last_resort_pod_that_stops_being_ready_is_withdrawn(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.pods.observe("MODIFIED", pod_body("web-1", terminating=True, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.pods.observe("MODIFIED", pod_body("web-1", terminating=True, ready=False, anycast="198.51.100.10"))
    await node.reconciler.reconcile()
    assert node.recorder.log == ["withdraw 198.51.100.10/32 via 192.0.2.11 dev flock00000001"]
    assert [e.reason for e in node.events.events] == ["AnycastAdvertised", "AnycastLastResort", "AnycastWithdrawn"]


async def test_a_pod_that_asks_for_withdraw_is_withdrawn_as_soon_as_it_terminates(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    await node.reconciler.reconcile()
    node.recorder.log.clear()
    node.pods.observe("MODIFIED", pod_body("web-1", terminating=True, anycast="198.51.100.10",
                                           when_terminating="withdraw"))
    await node.reconciler.reconcile()
    assert node.recorder.log == ["withdraw 198.51.100.10/32 via 192.0.2.11 dev flock00000001"]


async def test_a_bad_terminating_policy_is_reported_and_the_default_applies(node: Node) -> None:
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=("198.51.100.10",))
    node.pods.observe("MODIFIED", pod_body("web-1", anycast="198.51.100.10", when_terminating="sometimes"))
    for _ in range(3):
        await node.reconciler.reconcile()
    [rejected] = [e for e in node.events.events if e.reason == "AnycastRejected"]
    assert rejected.message == ("flock.io/anycast-terminating: 'sometimes' is neither 'last-resort' nor "
                                "'withdraw'; 'last-resort' applies")
    node.pods.observe("MODIFIED", pod_body("web-1", terminating=True, anycast="198.51.100.10",
                                           when_terminating="sometimes"))
    await node.reconciler.reconcile()
    assert A4 in node.recorder.routes.last_resort


async def test_events_spread_over_100_ms_take_a_few_passes_not_one_each(node: Node) -> None:
    for n in range(1, 9):
        await node.add_pod(f"web-{n}", f"192.0.2.{10 + n}", f"2001:db8::{10 + n}", ready=False,
                           anycast=(f"198.51.100.{10 + n}",))
    reconciler = node.reconciler
    task = asyncio.create_task(reconciler.run())
    try:
        await asyncio.wait_for(reconciler.next_pass("test"), timeout=10)
        await asyncio.sleep(0.1)  # quiet: the next event is served at once
        start = reconciler.passes
        for step in range(50):  # 50 events, 2 ms apart
            n = 1 + step % 8
            node.pods.observe("MODIFIED", pod_body(f"web-{n}", ready=step % 2 == 0, anycast=f"198.51.100.{10 + n}"))
            reconciler.wake("pod")
            await asyncio.sleep(0.002)
        await asyncio.wait_for(reconciler.next_pass("test"), timeout=10)
        assert reconciler.passes - start <= 12, "gathered into a few passes (about one per 25 ms)"
        # Every event was served: the last state of each pod is what the kernel routes.
        expected = {ipaddress.ip_address(f"198.51.100.{10 + n}") for n in range(1, 9)
                    if (max(step for step in range(50) if 1 + step % 8 == n) % 2 == 0)}
        assert set(node.recorder.routes.table) == expected
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@given(st.ip_addresses() | st.builds(lambda n, scope: ipaddress.IPv6Address(f"{ipaddress.IPv6Address(n)}%{scope}"),
                                     st.integers(0, 2**128 - 1), st.sampled_from(["eth0", "1"])))
def test_event_addresses_are_written_as_ipaddress_writes_them(address: ipaddress.IPv4Address
                                                              | ipaddress.IPv6Address) -> None:
    assert address_text(address) == str(address)
    assert prefix_text(address) == host_prefix(address)


@pytest.mark.parametrize("text", ["::ffff:198.51.100.1", "::198.51.100.1", "::1", "::", "::ffff:0:1",
                                  "0:0:0:0:1::1", "2001:db8::", "2001:db8:0:0:1::1", "2001:0:0:1::1"])
def test_event_addresses_with_zeros_and_embedded_ipv4_are_written_as_ipaddress_writes_them(text: str) -> None:
    address = ipaddress.IPv6Address(text)
    assert address_text(address) == str(address)


async def test_a_pass_with_many_route_edits_logs_one_line_and_each_edit_at_debug_level(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    many = tuple(f"198.51.100.{n}" for n in range(10, 40))
    await node.add_pod("web-1", "192.0.2.11", "2001:db8::11", anycast=many)
    await node.add_pod("web-2", "192.0.2.12", "2001:db8::12", anycast=("198.51.100.50", "198.51.100.51"))
    with caplog.at_level("DEBUG", logger="flock.reconciler"):
        await node.reconciler.reconcile(trigger="start")
    lines = [r for r in caplog.records if r.getMessage().startswith("route ")]
    assert [r.getMessage() for r in lines if r.levelname == "INFO"] == [
        "route edits replace=32 first=add 198.51.100.10/32 via 192.0.2.11 dev flock00000001; "
        "add 198.51.100.11/32 via 192.0.2.11 dev flock00000001; add 198.51.100.12/32 via 192.0.2.11 dev flock00000001"]
    assert len([r for r in lines if r.levelname == "DEBUG"]) == 32

    caplog.clear()
    node.pods.observe("MODIFIED", pod_body("web-2", ready=False, anycast="198.51.100.50,198.51.100.51"))
    with caplog.at_level("INFO", logger="flock.reconciler"):
        await node.reconciler.reconcile(trigger="pod")
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("route ")] == [
        "route withdraw 198.51.100.50/32 via 192.0.2.12 dev flock00000002",
        "route withdraw 198.51.100.51/32 via 192.0.2.12 dev flock00000002"], "a few edits: one line each"
