"""The reconciler against a real kernel: a node netns with three pods, real netlink.

BIRD is the in-memory fake here (tests/bird and tests/e2e run the real one); what is
checked is the kernel as ``ip -j route`` shows it, and the netlink messages each pass
causes (seen by a route monitor in the node namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.store import AllocationStore
from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, PodRef
from flock.core.podcache import PodCache
from flock.metrics import Metrics
from flock.reconciler import Reconciler
from flock.testing import FakeBird, RecordingEvents
from tests.support.agent import eventually
from tests.support.config import agent_config
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import PlumbedPod, plumb_pod, sh
from tests.support.nexthop_monitor import watch_nexthops
from tests.support.routes import PROTO, WITHDRAWN, flock_routes, next_hops
from tests.unit.factories import pod_body

pytestmark = pytest.mark.netns

V4, V6 = "198.51.100.10/32", "2001:db8:100::10/128"


class Node:
    def __init__(self, netns: str, pods: list[PlumbedPod], state: pathlib.Path, mode: str = "multipath") -> None:
        self.netns = netns
        self.mode = mode
        self.pods = pods
        self.state = state
        self.cache = PodCache("node-a")
        self.events = RecordingEvents()
        self.bird = FakeBird()
        self.routes: NetlinkRoutes | None = None
        self.reconciler: Reconciler | None = None
        self.store = AllocationStore(state)

    async def start_agent(self, **settings: Any) -> Reconciler:
        """What the agent does at start-up: load the store, open netlink, adopt the kernel.

        ``settings``: config keys, e.g. ``resyncSeconds=0.5``.
        """
        if self.routes is not None:
            await self.routes.close()
        self.store = AllocationStore(self.state)
        await self.store.load()
        self.routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=self.netns,
                                    nexthop_groups=self.mode)
        await self.routes.start()
        assert self.routes.mode == self.mode, self.routes.fallback
        self.reconciler = Reconciler(
            config=agent_config(hostNetns=self.netns, **settings), store=self.store, pods=self.cache,
            routes=self.routes,
            bird=self.bird, render_bird=lambda: "# bird.conf\n",
            events=self.events, metrics=Metrics())
        await self.reconciler.adopt()
        return self.reconciler

    def pod_event(self, index: int, *, ready: bool, terminating: bool = False) -> None:
        self.cache.observe("MODIFIED", pod_body(f"web-{index}", uid=f"uid-{index}", ready=ready,
                                                terminating=terminating, anycast="198.51.100.10, 2001:db8:100::10"))


@pytest.fixture(params=["multipath", "resilient"])
async def node(make_netns: Callable[[str], str], tmp_path: pathlib.Path,
               request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    netns = make_netns("node")
    sh("ip", "link", "set", "lo", "up", netns=netns)
    pods = [plumb_pod(netns, make_netns("pod"), f"reconcile-{i}", [f"203.0.113.1{i}", f"2001:db8:200::1{i}"],
                      ["198.51.100.10", "2001:db8:100::10"]) for i in range(3)]
    result = Node(netns, pods, tmp_path, request.param)
    await result.store.load()
    for i, pod in enumerate(pods):
        await result.store.put(Allocation(ContainerID(pod.container_id), PodRef("default", f"web-{i}", f"uid-{i}"),
                                          pod.host_ifname, pod.ips, pod.anycast, AllocationState.COMMITTED))
        result.pod_event(i, ready=False)
    try:
        yield result
    finally:
        if result.routes is not None:
            await result.routes.close()


def hop(pod: PlumbedPod, version: int) -> tuple[str, str]:
    via: IPAddress = next(ip for ip in pod.ips if ip.version == version)
    return (str(via), pod.host_ifname)


async def test_routes_follow_the_pods_through_their_lifecycle(node: Node) -> None:
    p0, p1, p2 = node.pods
    # Someone else's route for the same prefix (another protocol, another metric).
    sh("ip", "-n", node.netns, "route", "add", V4, "via", "203.0.113.12", "dev", p2.host_ifname,
       "proto", "static", "metric", "100")
    reconciler = await node.start_agent()

    node.pod_event(0, ready=True)
    await reconciler.reconcile()
    assert next_hops(node.netns, V4) == [hop(p0, 4)]
    assert "nexthops" not in flock_routes(node.netns, V4)[0], "one pod: the plain `via … dev …` shape"
    assert next_hops(node.netns, V6) == [hop(p0, 6)]

    node.pod_event(1, ready=True)
    await reconciler.reconcile()
    assert next_hops(node.netns, V4) == sorted([hop(p0, 4), hop(p1, 4)])
    assert next_hops(node.netns, V6) == sorted([hop(p0, 6), hop(p1, 6)])

    with watch_routes(node.netns) as seen:
        await reconciler.reconcile()
        await reconciler.reconcile()
    assert seen.changes() == [], "a pass with nothing to do writes nothing to the kernel"

    node.pod_event(0, ready=True, terminating=True)
    await reconciler.reconcile()
    assert next_hops(node.netns, V4) == [hop(p1, 4)]
    assert next_hops(node.netns, V6) == [hop(p1, 6)]

    node.pod_event(1, ready=False)
    await reconciler.reconcile()
    assert next_hops(node.netns, V4) == [] and next_hops(node.netns, V6) == []

    static = json.loads(sh("ip", "-n", node.netns, "-j", "route", "show", V4, "proto", "static"))
    assert [(r["gateway"], r["metric"]) for r in static] == [("203.0.113.12", 100)], "foreign route untouched"
    reasons = [(e.reason, e.involved.name) for e in node.events.events]
    assert reasons.count(("AnycastAdvertised", "web-0")) == 1  # v4 and v6 in one Event
    assert reasons.count(("AnycastWithdrawn", "web-1")) == 1


async def test_a_restarted_agent_with_unchanged_state_writes_nothing(node: Node) -> None:
    reconciler = await node.start_agent()
    node.pod_event(0, ready=True)
    node.pod_event(2, ready=True)
    await reconciler.reconcile()
    before = (next_hops(node.netns, V4), next_hops(node.netns, V6))
    assert len(before[0]) == 2

    with watch_routes(node.netns) as seen, watch_nexthops(node.netns) as seen_nexthops:
        restarted = await node.start_agent()
        await restarted.reconcile(full_view=True)
        await restarted.reconcile()
    assert seen.changes() == [] and seen_nexthops.writes == []
    assert node.routes is not None and node.routes.writes == 0
    assert (next_hops(node.netns, V4), next_hops(node.netns, V6)) == before
    assert [e.reason for e in node.events.events].count("AnycastAdvertised") == 2  # none re-posted


async def test_a_route_deleted_by_hand_is_repaired_on_the_next_full_view(node: Node) -> None:
    reconciler = await node.start_agent()
    node.pod_event(0, ready=True)
    await reconciler.reconcile()
    sh("ip", "-n", node.netns, "route", "del", V4, "proto", str(PROTO))
    assert next_hops(node.netns, V4) == []
    await reconciler.reconcile(full_view=True)
    assert next_hops(node.netns, V4) == [hop(node.pods[0], 4)]


async def test_the_running_loop_repairs_drift_every_resync(node: Node) -> None:
    # The pods' re-list is the agent's, beside the loop (tests/cni/test_api_outage.py).
    reconciler = await node.start_agent(resyncSeconds=0.5)
    node.pod_event(0, ready=True)
    running = asyncio.create_task(reconciler.run())
    try:
        reconciler.wake("test")
        await eventually(lambda: next_hops(node.netns, V4) == [hop(node.pods[0], 4)], within=10,
                         what="the loop routes the Ready pod")
        sh("ip", "-n", node.netns, "route", "del", V4, "proto", str(PROTO))
        await eventually(lambda: next_hops(node.netns, V4) == [hop(node.pods[0], 4)], within=10,
                         what="a resync puts back the route deleted by hand")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_the_last_pod_leaving_re_tags_its_route_which_forwards_until_the_linger_ends(node: Node) -> None:
    reconciler = await node.start_agent(withdrawnLingerSeconds=0.3)
    node.pod_event(0, ready=True)
    await reconciler.reconcile()
    routed = next_hops(node.netns, V4)
    assert flock_routes(node.netns, V4)[0]["flags"] == ["onlink"], "BIRD learns only onlink next hops"

    with watch_routes(node.netns, settle=0.1) as seen:
        node.pod_event(0, ready=False)
        await reconciler.reconcile()
    # One write per prefix: the same route, re-tagged. BIRD stops learning it; packets still land.
    assert [str(c) for c in seen.changes()] == [f"new {V4} proto {WITHDRAWN}", f"new {V6} proto {WITHDRAWN}"]
    assert next_hops(node.netns, V4) == [] and next_hops(node.netns, V4, WITHDRAWN) == routed

    with watch_routes(node.netns, settle=0.1) as seen:
        await asyncio.sleep(0.4)
        await reconciler.reconcile(trigger="tick")
    assert sorted(str(c) for c in seen.changes()) == [f"del {V4} proto {WITHDRAWN}", f"del {V6} proto {WITHDRAWN}"]
    assert flock_routes(node.netns, V4, WITHDRAWN) == []


async def test_a_restart_mid_linger_adopts_the_withdrawn_route_and_deletes_it_later(node: Node) -> None:
    reconciler = await node.start_agent(withdrawnLingerSeconds=0.3)
    node.pod_event(0, ready=True)
    await reconciler.reconcile()
    node.pod_event(0, ready=False)
    await reconciler.reconcile()

    with watch_routes(node.netns, settle=0.1) as seen:
        restarted = await node.start_agent(withdrawnLingerSeconds=0.3)
        await restarted.reconcile()
    assert seen.changes() == [], "adopted: nothing written at once"
    await asyncio.sleep(0.4)
    await restarted.reconcile(trigger="tick")
    assert flock_routes(node.netns, V4, WITHDRAWN) == [] and flock_routes(node.netns, V6, WITHDRAWN) == []


async def test_routes_bird_cannot_learn_are_written_again_onlink_even_while_holding(node: Node) -> None:
    # Written without onlink (by hand, or by an older flock): BIRD would refuse to learn them.
    p0, p1 = node.pods[0], node.pods[1]
    sh("ip", "-n", node.netns, "route", "add", V4, "proto", str(PROTO),
       "nexthop", "via", str(p0.ips[0]), "dev", p0.host_ifname, "nexthop", "via", str(p1.ips[0]), "dev", p1.host_ifname)
    sh("ip", "-n", node.netns, "-6", "route", "add", V6, "proto", str(PROTO), "via", str(p0.ips[1]),
       "dev", p0.host_ifname)
    reconciler = await node.start_agent()
    reconciler.holding = True  # before the first pod LIST: only what the kernel had is kept
    await reconciler.reconcile()
    v4, v6 = flock_routes(node.netns, V4)[0], flock_routes(node.netns, V6)[0]
    assert [hop["flags"] for hop in v4["nexthops"]] == [["onlink"], ["onlink"]]
    # One next hop: flat, or (IPv6 through a resilient group) a list of one.
    assert [hop["flags"] for hop in v6.get("nexthops") or [v6]] == [["onlink"]]
    assert next_hops(node.netns, V4) == sorted([hop(p0, 4), hop(p1, 4)]), "the same next hops"

    with watch_routes(node.netns, settle=0.1) as seen:
        await reconciler.reconcile(full_view=True)
    assert seen.changes() == [], "written once"
