"""A pinned pod's CNI DEL answers once its network is gone; its pin and conntrack entries
go after, while its record keeps its slot and addresses from other pods.

The CNI server over in-memory stand-ins for the kernel (its veths, pins and conntrack), so
that a test can hold the unpin and see what happens meanwhile: the order, not the time.
The same through the real agent and kernel: tests/cni/test_del_cleanup.py; how long a DEL
takes: bench/cni_latency.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from flock.adapters.store import AllocationStore
from flock.cniserver import CniServer
from flock.core.drain import cut_message
from flock.core.model import AllocationState, ContainerID, IPAddress
from flock.core.pinning import PinAdoption, PodPin
from flock.core.podcache import PodCache
from flock.core.ports import PlumbedPod
from flock.drainwatch import DrainWatch
from flock.metrics import Metrics
from flock.testing import FakeConnections, RecordingEvents
from tests.support.config import agent_config
from tests.unit.factories import pod_body

ANYCAST = "198.51.100.10"


class Veths:
    """The node's veths, by name (a PodNetworks)."""

    def __init__(self) -> None:
        self.up: set[str] = set()

    async def add(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                  anycast: Sequence[IPAddress]) -> PlumbedPod:
        self.up.add(host_ifname)
        return PlumbedPod("02:00:00:00:00:01", "02:00:00:00:00:02")

    async def netns_exists(self, path: str) -> bool:
        return True

    async def pod_ifname(self, *, host_ifname: str, pod_netns: str) -> str | None:
        return "eth0" if host_ifname in self.up else None

    async def delete(self, host_ifname: str) -> bool:
        found = host_ifname in self.up
        self.up.discard(host_ifname)
        return found

    async def check(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                    anycast: Sequence[IPAddress]) -> list[str]:
        return []


class Pins:
    """The kernel's pins (a Pinning); ``hold`` keeps every unpin waiting until it is set."""

    slots = 255

    def __init__(self) -> None:
        self.pinned: dict[str, int] = {}
        self.hold = asyncio.Event()
        self.hold.set()
        self.unpins_started = 0

    async def kernel_slots(self) -> dict[str, int]:
        return dict(self.pinned)

    async def adopt(self, pins: Sequence[PodPin]) -> PinAdoption:
        self.pinned = {pin.host_ifname: pin.slot for pin in pins}
        return PinAdoption()

    async def pin(self, pin: PodPin) -> None:
        self.pinned[pin.host_ifname] = pin.slot

    async def unpin(self, pin: PodPin) -> None:
        self.unpins_started += 1
        await self.hold.wait()
        self.pinned.pop(pin.host_ifname, None)


class NoSharedRoutes:
    def shares_route(self, dev: str) -> bool:
        return False

    async def release(self, dev: str) -> bool:
        return True


@dataclasses.dataclass
class Node:
    server: CniServer
    store: AllocationStore
    veths: Veths
    pins: Pins
    connections: FakeConnections
    events: RecordingEvents
    pods: PodCache

    async def cni(self, command: str, container: str, pod: str = "") -> tuple[int, dict[str, Any]]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": f"/run/netns/{container}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}" if pod else ""}
        config = {"cniVersion": "1.0.0", "name": "flock", "type": "flock", "socket": "/run/flock/cni.sock"}
        code, out = await self.server.handle(env, json.dumps(config))
        return code, json.loads(out) if out else {}

    async def add(self, name: str) -> tuple[int, dict[str, Any]]:
        self.pods.observe("ADDED", pod_body(name, anycast=ANYCAST))
        return await self.cni("ADD", f"ctr-{name}", name)

    def record(self, name: str) -> Any:
        return self.store.get(ContainerID(f"ctr-{name}"))

    def drained(self) -> list[str]:
        return [e.message for e in self.events.events if e.reason == "AnycastDrained"]


@pytest.fixture
async def node(tmp_path: pathlib.Path) -> Node:
    config = agent_config()
    store = AllocationStore(tmp_path)
    await store.load()
    pods = PodCache("node-a", "ready-and-not-terminating", 64)
    connections, events = FakeConnections(), RecordingEvents()
    drain = DrainWatch(config=config, store=store, pods=pods, next_hop_devs=set, connections=connections,
                       events=events, metrics=Metrics())
    veths, pins = Veths(), Pins()

    async def lookup(namespace: str, name: str) -> Mapping[str, Any] | None:
        return pods.body(namespace, name)

    server = CniServer(config=config, store=store, network=veths, lookup_pod=lookup, nexthops=NoSharedRoutes(),
                       pinning=pins, drain=drain, pod_cidrs=config.pod_cidrs)
    await server.recover()
    return Node(server, store, veths, pins, connections, events, pods)


async def test_del_answers_before_the_pod_is_unpinned_and_its_record_reserves_until_then(node: Node) -> None:
    code, web1 = await node.add("web-1")
    assert code == 0, web1
    record = node.record("web-1")
    slot, veth = record.pin_slot, record.host_ifname
    assert node.pins.pinned == {veth: slot}
    node.connections.open = {slot: 2}

    node.pins.hold.clear()  # every unpin waits from now on
    assert await node.cni("DEL", "ctr-web-1", "web-1") == (0, {})
    # Answered: the network is gone and the Event said how many it cut; the pin is not gone yet.
    assert veth not in node.veths.up
    assert node.drained() == [cut_message("node-a", 2)]
    assert node.pins.pinned == {veth: slot}
    assert node.record("web-1").state is AllocationState.UNPINNING
    assert node.server.cleanups() == 1

    # Meanwhile the slot, the addresses and the veth name stay web-1's.
    code, web2 = await node.add("web-2")
    assert code == 0, web2
    other = node.record("web-2")
    assert other.pin_slot != slot
    assert not set(other.pod_ips) & set(record.pod_ips)
    assert other.host_ifname != veth
    # A runtime's repeated DEL succeeds at once; GC leaves the record to its clean-up.
    assert await node.cni("DEL", "ctr-web-1", "web-1") == (0, {})
    assert node.pins.unpins_started == 1
    config = {"cniVersion": "1.1.0", "name": "flock", "type": "flock", "socket": "/run/flock/cni.sock",
              "cni.dev/valid-attachments": [{"containerID": "ctr-web-2", "ifname": "eth0"}],
              "gcGraceSeconds": 0}
    assert await node.server.handle({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}, json.dumps(config)) == (0, "")
    assert node.pins.unpins_started == 1 and node.record("web-1") is not None
    assert node.drained() == [cut_message("node-a", 2)]

    node.pins.hold.set()
    await node.server.close()
    # Done: pin and conntrack entries gone (those of the DEL's one dump), then the record.
    assert node.pins.pinned == {other.host_ifname: other.pin_slot}
    assert node.connections.forgotten == [slot] and len(node.connections.counted) == 1
    assert node.record("web-1") is None and node.server.cleanups() == 0
    assert node.drained() == [cut_message("node-a", 2)]


async def test_an_add_of_the_same_container_waits_for_its_clean_up(node: Node) -> None:
    assert (await node.add("web-1"))[0] == 0
    first = node.record("web-1")
    node.pins.hold.clear()
    assert (await node.cni("DEL", "ctr-web-1", "web-1"))[0] == 0
    again = asyncio.create_task(node.add("web-1"))
    await asyncio.sleep(0.05)
    assert not again.done() and node.record("web-1").state is AllocationState.UNPINNING
    node.pins.hold.set()
    code, result = await asyncio.wait_for(again, 10)
    assert code == 0, result
    record = node.record("web-1")
    assert record.state is AllocationState.COMMITTED and record.pin_slot is not None
    assert node.pins.pinned == {record.host_ifname: record.pin_slot}
    assert first.pin_slot != record.pin_slot  # round robin: a freed slot is reused late


async def test_a_start_finishes_the_clean_up_a_stopped_agent_left(node: Node, tmp_path: pathlib.Path) -> None:
    assert (await node.add("web-1"))[0] == 0
    slot = node.record("web-1").pin_slot
    node.pins.hold.clear()
    assert (await node.cni("DEL", "ctr-web-1", "web-1"))[0] == 0
    await node.server.close(seconds=0.1)  # stops before the unpin is over
    assert node.record("web-1").state is AllocationState.UNPINNING

    # The next agent: same records on disk, same kernel.
    store = AllocationStore(tmp_path)
    await store.load()
    assert store.get(ContainerID("ctr-web-1")) is not None
    node.pins.hold.set()
    node.connections.open = {slot: 1}  # still marked with its slot
    drain = DrainWatch(config=agent_config(), store=store, pods=node.pods, next_hop_devs=set,
                       connections=node.connections, events=node.events, metrics=Metrics())
    server = CniServer(config=agent_config(), store=store, network=node.veths, lookup_pod=node.server.lookup_pod,
                       nexthops=NoSharedRoutes(), pinning=node.pins, drain=drain,
                       pod_cidrs=agent_config().pod_cidrs)
    await server.adopt_pins()
    assert node.pins.pinned == {}, "adopting the kernel's pins drops the unpinning pod's"
    kept = store.get(ContainerID("ctr-web-1"))
    assert kept is not None and kept.pin_slot == slot, "its slot stays reserved"
    await server.recover()
    await server.close()
    assert store.get(ContainerID("ctr-web-1")) is None
    assert node.connections.forgotten == [slot] and node.connections.open == {}
    assert node.drained() == [], "the DEL said it already (nothing was open then): not again"
