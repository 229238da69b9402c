"""Drain you can see, in a real kernel: pinned connections counted from conntrack
(ctnetlink, in the node's netns) while real TCP and UDP flows run, a terminating pod's
drain reported once when its clients close, and a DEL that cuts connections says so.

The topology is tests/kernel/test_pinning.py's: a client netns, a node netns routing the
anycast addresses to three pods (web-0, web-1, web-2) with flock's pinning in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from flock.adapters.conntrack import ConntrackCounter
from flock.adapters.store import AllocationStore
from flock.core.drain import cut_message
from flock.core.model import Allocation, AllocationState, ContainerID, PodRef
from flock.core.pinning import DEFAULT_MARK_MASK, slot_mark
from flock.core.podcache import PodCache
from flock.drainwatch import DrainWatch
from flock.metrics import Metrics
from flock.testing import RecordingEvents
from tests.kernel import test_pinning
from tests.kernel.test_pinning import ANYCAST, Lab
from tests.support.config import agent_config
from tests.support.flows import EchoServers, Flow, long_lived_tcp, long_lived_udp
from tests.support.netns import PlumbedPod, sh
from tests.unit.factories import pod_body

pytestmark = [pytest.mark.netns, pytest.mark.slow]

lab = test_pinning.lab  # the same fixture: client, node, three pinned pods

TCP_FLOWS = 24  # web-0 gets none with probability (2/3)^24 ~ 6e-5


@dataclasses.dataclass
class Drain:
    lab: Lab
    version: int
    watch: DrainWatch
    store: AllocationStore
    pods: PodCache
    events: RecordingEvents
    metrics: Metrics
    servers: EchoServers
    routed: list[PlumbedPod]  # the anycast route's next hops now

    def name(self, pod: PlumbedPod) -> str:
        return self.lab.names[pod.netns]

    def route(self, pods: list[PlumbedPod]) -> None:
        self.lab.route(self.version, pods)
        self.routed = list(pods)

    def series(self) -> dict[str, float]:
        text = self.metrics.exposition().decode()
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^flock_pinned_connections\{namespace="default",pod="([^"]+)"\} (\S+)$', text, re.M)}

    def drained(self) -> list[str]:
        return [f"{e.involved.name}: {e.message}" for e in self.events.events if e.reason == "AnycastDrained"]

    def record(self, index: int) -> Allocation:
        record = self.store.get(ContainerID(f"ctr-web-{index}"))
        assert record is not None
        return record


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
async def drain(lab: Lab, tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> AsyncIterator[Drain]:
    version: int = request.param
    table = lab.table()
    await table.adopt(lab.pins())
    store = AllocationStore(tmp_path)
    pods = PodCache("node-a", "ready-and-not-terminating", 64)
    for pin, pod in zip(lab.pins(), lab.pods, strict=True):
        name = lab.names[pod.netns]
        await store.put(Allocation(ContainerID(f"ctr-{name}"), PodRef("default", name, f"uid-{name}"),
                                   pod.host_ifname, pod.ips, (), AllocationState.COMMITTED, pin_slot=pin.slot))
        pods.observe("ADDED", pod_body(name, anycast=ANYCAST[version]))
    servers = EchoServers()
    for pod in lab.pods:
        await servers.start(lab.names[pod.netns], pod.netns, [ANYCAST[version]])
    events, metrics = RecordingEvents(), Metrics()
    state = Drain(lab, version, None, store, pods, events, metrics, servers, [])  # type: ignore[arg-type]
    state.watch = DrainWatch(config=agent_config(), store=store, pods=pods,
                             next_hop_devs=lambda: {p.host_ifname for p in state.routed},
                             connections=ConntrackCounter(mask=DEFAULT_MARK_MASK, host_netns=lab.node),
                             events=events, metrics=metrics)
    state.route(lab.pods)
    try:
        yield state
    finally:
        await servers.close()


def _start(d: Drain, count: int, kind: str = "tcp") -> list[tuple[asyncio.Event, asyncio.Task[Flow]]]:
    """``count`` long-lived flows from the client (a message every 100 ms), each with its own stop."""
    flow = long_lived_tcp if kind == "tcp" else long_lived_udp
    started = []
    for _ in range(count):
        stop = asyncio.Event()
        started.append((stop, asyncio.create_task(flow(d.lab.client, ANYCAST[d.version], stop))))
    return started


async def _end(flows: list[tuple[asyncio.Event, asyncio.Task[Flow]]]) -> list[Flow]:
    for stop, _ in flows:
        stop.set()
    return [await task for _, task in flows]


async def _scan_until(d: Drain, check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Scan every 0.2 s until ``check()`` (generous: 2 CPUs shared)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        await d.watch.scan()
        if check():
            return
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {d.series()} {d.drained()}"
        await asyncio.sleep(0.2)


async def test_a_terminating_pods_connections_are_counted_and_its_drain_posted_once(drain: Drain) -> None:
    d = drain
    flows = _start(d, TCP_FLOWS)
    await asyncio.sleep(1.0)  # every flow has its pod
    await d.watch.scan(full=True)
    counted = d.series()
    assert sum(counted.values()) == TCP_FLOWS, counted
    on_web0 = int(counted["web-0"])
    assert on_web0 > 0, f"no flow went to web-0 (ECMP did not spread): {counted}"

    # web-0 terminates; until a pass takes it out of the route it may still get new connections.
    d.pods.observe("MODIFIED", pod_body("web-0", terminating=True, anycast=ANYCAST[d.version]))
    await d.watch.scan()
    assert d.drained() == []
    d.route(d.lab.pods[1:])
    for _ in range(3):  # pinned: its connections stay, and are counted every scan
        await asyncio.sleep(0.3)
        await d.watch.scan()
    assert d.series()["web-0"] == on_web0 and d.drained() == []

    # Its clients finish (and the others' too): the count drops to 0, one Event says so.
    done = await _end(flows)
    assert [f.error for f in done if not f.kept] == []
    assert Counter(f.pod for f in done)["web-0"] == on_web0
    await _scan_until(d, lambda: d.series().get("web-0") == 0.0)
    for _ in range(3):
        await d.watch.scan()
    drained = d.drained()
    assert len(drained) == 1, drained
    assert drained[0].startswith("web-0: drained on node-a: the last of its pinned connections ended "), drained
    assert drained[0].endswith(f"({on_web0} pinned connection{'s' if on_web0 != 1 else ''} open then)"), drained
    print(f"\nIPv{d.version}: {dict(Counter(f.pod for f in done))}; {drained[0]}")


async def test_assured_udp_flows_count_as_connections(drain: Drain) -> None:
    d = drain
    flows = _start(d, 9, "udp")
    await asyncio.sleep(1.0)
    await d.watch.scan(full=True)
    assert sum(d.series().values()) == 0, "not assured yet: conntrack assures a UDP flow after 2 s of replies"
    await asyncio.sleep(2.5)
    await d.watch.scan(full=True)
    counted = d.series()
    done = await _end(flows)
    assert [f.error for f in done if not f.kept] == []
    wanted = Counter(f.pod for f in done)
    assert {pod: int(n) for pod, n in counted.items() if n} == dict(wanted), (counted, wanted)


async def test_a_del_with_open_connections_says_how_many_it_cut(drain: Drain) -> None:
    d = drain
    flows = _start(d, TCP_FLOWS)
    await asyncio.sleep(1.0)
    await d.watch.scan(full=True)
    on_web1 = int(d.series()["web-1"])
    assert on_web1 > 0, d.series()
    # web-1's DEL without a graceful termination, in the CNI DEL's order: out of the route,
    # its connections counted (one dump, which also lists its entries), veth gone (the DEL
    # answers here), unpinned, the entries of that dump deleted.
    web1 = d.lab.pods[1]
    d.route([d.lab.pods[0], d.lab.pods[2]])
    entries = await d.watch.network_removing(d.record(1))
    assert entries is not None and entries.open == on_web1 and len(entries.keys) >= on_web1
    sh("ip", "link", "del", web1.host_ifname, netns=d.lab.node)
    assert d.drained() == ["web-1: " + cut_message("node-a", on_web1)]
    await d.lab.table().unpin(d.lab.pins()[1])
    await d.watch.network_removed(d.record(1), entries)
    assert d.drained() == ["web-1: " + cut_message("node-a", on_web1)]
    assert "web-1" not in d.series()
    # Its slot's entries are gone: a pod that gets slot 2 later starts with none.
    mark = f"0x{slot_mark(2, DEFAULT_MARK_MASK):x}/0x{DEFAULT_MARK_MASK:x}"
    listed = sh("conntrack", "-L", "-m", mark, netns=d.lab.node, check=False)
    assert "ESTABLISHED" not in listed, listed
    done = await _end(flows)
    assert all(f.kept for f in done if f.pod != "web-1"), [(f.pod, f.error) for f in done]
