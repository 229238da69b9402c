"""Connection pinning in a real kernel: long-lived flows through a next hop's removal.

    client netns ── node netns (ECMP to 3 pods, strict rp_filter) ──┬─ web-0  lo: anycast
      192.0.2.2        192.0.2.1                                    ├─ web-1  lo: anycast
      2001:db8:ffff::2 2001:db8:ffff::1                             └─ web-2  lo: anycast

Each pod serves TCP and UDP echo on the anycast addresses. Long-lived flows (a line
every 100 ms) start, then the first next hop (web-0, the one whose removal also re-hashes
survivors: shared/notes/drain.md) leaves the anycast route, as when web-0 terminates.
With flock's pinning (flock.adapters.pinning, as the agent writes it) every flow stays on
its pod and no new flow reaches web-0; without it, web-0's flows are reset or moved.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from flock.adapters.pinning import TABLE, PinningTable
from flock.core.pinning import DEFAULT_MARK_MASK, PodPin, slot_mark
from tests.support.flows import EchoServers, Flow, long_lived_tcp, long_lived_udp, one_request
from tests.support.netns import PlumbedPod, plumb_pod, sh
from tests.support.pin_monitor import watch_pinning

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ANYCAST = {4: "198.51.100.10", 6: "2001:db8:100::10"}
POOLS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64")]
PROTO = 201
TCP_FLOWS, UDP_FLOWS, NODE_FLOWS, NEW_FLOWS = 30, 12, 10, 60


@dataclass
class Lab:
    client: str
    node: str
    pods: list[PlumbedPod]
    names: dict[str, str]  # pod netns -> pod name

    def route(self, version: int, pods: list[PlumbedPod]) -> None:
        """The anycast route of ``version`` through ``pods`` (replace), as the agent writes it."""
        hops: list[str] = []
        for pod in pods:
            via = next(ip for ip in pod.ips if ip.version == version)
            hops += ["nexthop", "via", str(via), "dev", pod.host_ifname, "onlink"]
        prefix = f"{ANYCAST[version]}/{32 if version == 4 else 128}"
        sh("ip", f"-{version}", "route", "replace", prefix, "proto", str(PROTO), *hops, netns=self.node)

    def pins(self) -> list[PodPin]:
        return [PodPin(index + 1, pod.host_ifname, pod.ips) for index, pod in enumerate(self.pods)]

    def table(self, enabled: bool = True) -> PinningTable:
        return PinningTable(enabled=enabled, mask=DEFAULT_MARK_MASK, pools=POOLS, protocol=PROTO,
                            host_netns=self.node)


@pytest.fixture
async def lab(make_netns: Callable[[str], str]) -> AsyncIterator[Lab]:
    client, node = make_netns("client"), make_netns("node")
    sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", client, netns=node)
    for netns, dev, v4, v6 in ((node, "uplink", "192.0.2.1", "2001:db8:ffff::1"),
                               (client, "eth0", "192.0.2.2", "2001:db8:ffff::2")):
        sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", netns=netns)
        sh("ip", "addr", "add", f"{v4}/24", "dev", dev, netns=netns)
        sh("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad", netns=netns)
        sh("ip", "link", "set", dev, "up", netns=netns)
    sh("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1", netns=client)
    sh("ip", "-6", "route", "add", "2001:db8:100::/64", "via", "2001:db8:ffff::1", netns=client)
    # The node: forwarding, 5-tuple ECMP hashing (as the agent sets it), and strict reverse-path
    # filtering as many production nodes run it (flock's veths get loose mode, as the CNI ADD does).
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                       ("net.ipv4.conf.all.rp_filter", "1"), ("net.ipv4.conf.default.rp_filter", "1"),
                       ("net.ipv4.fib_multipath_hash_policy", "3"), ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
                       ("net.ipv6.fib_multipath_hash_policy", "3"), ("net.ipv6.fib_multipath_hash_fields", "0x0037")):
        sh("sysctl", "-qw", f"{key}={value}", netns=node)
    pods = []
    names = {}
    for index in range(3):
        pod = plumb_pod(node, make_netns("pod"), f"pinning-{index}", [f"203.0.113.1{index}", f"2001:db8:200::1{index}"],
                        list(ANYCAST.values()))
        sh("sysctl", "-qw", f"net.ipv4.conf.{pod.host_ifname}.rp_filter=2", netns=node)
        pods.append(pod)
        names[pod.netns] = f"web-{index}"
    yield Lab(client, node, pods, names)


Run = tuple[list[Flow], list[Flow], list[Flow], Counter[str]]


async def _drain_run(lab: Lab, version: int, *, pinned: bool) -> Run:
    """Flows through web-0's removal from the route: (TCP, UDP, node-local TCP, new flows' pods)."""
    servers = EchoServers()
    try:
        for pod in lab.pods:
            await servers.start(lab.names[pod.netns], pod.netns, [ANYCAST[version]])
        lab.route(version, lab.pods)
        if pinned:
            table = lab.table()
            await table.adopt([])
            for pin in lab.pins():  # as CNI ADDs do, one pod at a time
                await table.pin(pin)
        address = ANYCAST[version]
        stop = asyncio.Event()
        tcp = [asyncio.create_task(long_lived_tcp(lab.client, address, stop)) for _ in range(TCP_FLOWS)]
        udp = [asyncio.create_task(long_lived_udp(lab.client, address, stop)) for _ in range(UDP_FLOWS)]
        local = [asyncio.create_task(long_lived_tcp(lab.node, address, stop)) for _ in range(NODE_FLOWS)]
        await asyncio.sleep(1.0)  # every flow has its pod (a reply every 100 ms)
        lab.route(version, lab.pods[1:])  # web-0 terminates: it leaves the next-hop set
        await asyncio.sleep(1.5)  # ~15 more replies each
        new = Counter([await one_request(lab.client, address) for _ in range(NEW_FLOWS)])
        stop.set()
        return ([await t for t in tcp], [await t for t in udp], [await t for t in local], new)
    finally:
        await servers.close()


def _summary(flows: list[Flow]) -> str:
    on_drained = [f for f in flows if f.pod == "web-0"]
    return (f"{sum(f.kept for f in flows)}/{len(flows)} kept ({len(on_drained)} on web-0, "
            f"{sum(f.kept for f in on_drained)} of them kept); broken: "
            f"{dict(Counter(f.error or '' for f in flows if not f.kept))}")


@pytest.mark.parametrize("version", [4, 6])
async def test_pinned_flows_stay_on_their_pod_when_its_next_hop_leaves(lab: Lab, version: int) -> None:
    tcp, udp, local, new = await _drain_run(lab, version, pinned=True)
    print(f"\npinned IPv{version}: TCP {_summary(tcp)}; UDP {_summary(udp)}; from the node {_summary(local)}; "
          f"new flows {dict(new)}")
    assert any(f.pod == "web-0" for f in tcp), "no flow went to web-0 (ECMP did not spread): nothing was tested"
    assert [f.error for f in tcp if not f.kept] == [], _summary(tcp)
    assert all(f.replies >= 15 for f in tcp), [f.replies for f in tcp]
    assert [f.error for f in udp if not f.kept] == [], _summary(udp)
    assert [f.error for f in local if not f.kept] == [], _summary(local)
    assert new["web-0"] == 0, f"new flows reached the draining pod: {dict(new)}"
    assert sum(new.values()) == NEW_FLOWS and set(new) <= {"web-1", "web-2"}, dict(new)


@pytest.mark.parametrize("version", [4, 6])
async def test_without_pinning_the_draining_pods_flows_break(lab: Lab, version: int) -> None:
    # The control: the same run with plain ECMP. It shows the test above can fail.
    tcp, udp, _local, new = await _drain_run(lab, version, pinned=False)
    print(f"\nunpinned IPv{version}: TCP {_summary(tcp)}; UDP {_summary(udp)}; new flows {dict(new)}")
    on_drained = [f for f in tcp if f.pod == "web-0"]
    assert on_drained, "no flow went to web-0: nothing was tested"
    assert not any(f.kept for f in on_drained), "without pinning, web-0's connections cannot survive"
    assert new["web-0"] == 0


async def test_pins_are_in_the_kernel_as_documented(lab: Lab) -> None:
    table = lab.table()
    await table.adopt(lab.pins())
    listing = sh("nft", "list", "table", "inet", TABLE, netns=lab.node)
    for pin in lab.pins():
        assert f'"{pin.host_ifname}" : goto save_slot_{pin.slot}' in listing
    assert "198.51.100.0/24" in listing and "2001:db8:100::/64" in listing
    rules = sh("ip", "rule", "show", "pref", "1000", netns=lab.node)
    mark = f"0x{slot_mark(1, DEFAULT_MARK_MASK):x}/0xff00000"
    assert rules.split("\n")[0].split() == ["1000:", "from", "all", "fwmark", mark, "lookup", "1000001", "proto", "201"]
    assert len(sh("ip", "-6", "rule", "show", "pref", "1000", netns=lab.node).splitlines()) == 3
    # A packet without a flock mark skips flock's rules in one step, to the nop after them.
    for version in (4, 6):
        assert sh("ip", f"-{version}", "rule", "show", "pref", "999", netns=lab.node).split() == [
            "999:", "from", "all", "fwmark", "0/0xff00000", "goto", "1003", "proto", "201"]
        assert sh("ip", f"-{version}", "rule", "show", "pref", "1003", netns=lab.node).split() == [
            "1003:", "from", "all", "nop", "proto", "201"]
    web0 = lab.pods[0]
    assert sh("ip", "route", "show", "table", "1000001", netns=lab.node).split() == [
        "198.51.100.0/24", "via", "203.0.113.10", "dev", web0.host_ifname, "proto", "201", "onlink"]
    assert sh("ip", "-6", "route", "show", "table", "1000001", netns=lab.node).split()[:8] == [
        "2001:db8:100::/64", "via", "2001:db8:200::10", "dev", web0.host_ifname, "proto", "201", "metric"]
    assert sh("sysctl", "-n", "net.ipv4.conf.all.src_valid_mark", netns=lab.node).strip() == "1"


async def test_adopting_what_the_kernel_holds_writes_nothing(lab: Lab) -> None:
    await lab.table().adopt(lab.pins())
    # An agent restart: a new PinningTable adopts the same pins.
    with watch_pinning(lab.node) as seen:
        done = await lab.table().adopt(lab.pins())
    assert seen.writes == [] and done.writes == 0, (seen.writes, done)
    assert await lab.table().kernel_slots() == {pin.host_ifname: pin.slot for pin in lab.pins()}


async def test_adoption_removes_stale_pins_and_repairs_missing_ones(lab: Lab) -> None:
    await lab.table().adopt(lab.pins())
    web0, web1, web2 = lab.pins()
    sh("ip", "rule", "del", "pref", "1000", "fwmark", f"0x{slot_mark(2, DEFAULT_MARK_MASK):x}/0xff00000",
       "lookup", "1000002", netns=lab.node)  # someone deleted web-1's IPv4 rule
    with watch_pinning(lab.node) as seen:
        done = await lab.table().adopt([web1, web2])  # web-0 is gone
    assert (done.table_written, done.elements_removed, done.rules_removed, done.rules_added) == (False, 1, 2, 1), done
    assert sorted(seen.writes).count("new rule") == 1 and "nft new table" not in seen.writes, seen.writes
    listing = sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=lab.node)
    assert web0.host_ifname not in listing and web1.host_ifname in listing
    assert sh("ip", "route", "show", "table", "1000001", netns=lab.node) == ""
    assert "1000002" in sh("ip", "rule", "show", "pref", "1000", netns=lab.node)


async def test_a_pin_is_undone_by_unpin_and_pinning_off_removes_everything(lab: Lab) -> None:
    table = lab.table()
    await table.adopt(lab.pins())
    web0 = lab.pins()[0]
    await table.unpin(web0)
    await table.unpin(web0)  # again: what is gone is fine
    assert web0.host_ifname not in sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=lab.node)
    assert "1000001" not in sh("ip", "rule", "show", netns=lab.node)
    await table.pin(web0)
    await table.pin(web0)  # idempotent
    assert web0.host_ifname in sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=lab.node)

    done = await lab.table(enabled=False).adopt([])
    assert done.table_written and done.rules_removed == 6 and done.routes_removed == 6, done
    assert done.rules_removed_skip == 4, done
    assert TABLE not in sh("nft", "list", "tables", netns=lab.node)
    for version in (4, 6):
        prefs = {line.split(":")[0] for line in sh("ip", f"-{version}", "rule", "show", netns=lab.node).splitlines()}
        assert prefs <= {"0", "32766", "32767"}, prefs
