"""Daisy chaining in a real kernel: long-lived flows through the *fabric's* re-hash.

    client ── ToR (ECMP over both nodes) ──┬─ node-a 192.0.2.6  ── web-a  lo: anycast
                                           └─ node-b 192.0.2.10 ── web-b  lo: anycast

Each node pins its pod's connections and runs the ring (flock.adapters.pinning and
flock.adapters.daisychain, as the agent sets them up). Long-lived TCP flows start over
both nodes; then the ToR routes the anycast address through node-a only (node-b
withdrew), back through both (node-b re-advertised), then through node-b only. Each time
the ToR moves flows to a node that has no socket for them. With the chain every flow
stays on its pod; without it, every moved flow is reset.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from flock.adapters.daisychain import DaisyChain
from flock.adapters.pinning import PinningTable
from flock.core.daisychain import DaisyChainConfig, Member, plan_chain
from flock.core.pinning import DEFAULT_MARK_MASK, PodPin, chain_mark
from tests.support.flows import EchoServers, Flow, long_lived_tcp, one_request
from tests.support.netns import PlumbedPod, plumb_pod, sh

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ANYCAST = {4: "198.51.100.10", 6: "2001:db8:100::10"}
POOLS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64")]
PROTO = 201
PORT = 4789
FLOWS = 24
NODES = {"node-a": ("192.0.2.6", "192.0.2.5", "2001:db8:ffff:1::2", "2001:db8:ffff:1::1"),
         "node-b": ("192.0.2.10", "192.0.2.9", "2001:db8:ffff:2::2", "2001:db8:ffff:2::1")}
MEMBERS = [Member(name, ipaddress.ip_address(v4)) for name, (v4, *_rest) in NODES.items()]
MEMBERS_V6 = [Member(name, ipaddress.ip_address(v6)) for name, (_v4, _tor, v6, _tor6) in NODES.items()]


@dataclass
class Fabric:
    client: str
    tor: str
    nodes: dict[str, str]  # name -> netns
    pods: dict[str, PlumbedPod]  # node name -> its pod

    def tor_route(self, version: int, names: list[str]) -> None:
        """The ToR's anycast route through ``names`` (replace), as BGP multipath installs it."""
        hops: list[str] = []
        for name in names:
            via = NODES[name][0] if version == 4 else NODES[name][2]
            hops += ["nexthop", "via", via]
        prefix = f"{ANYCAST[version]}/{32 if version == 4 else 128}"
        sh("ip", f"-{version}", "route", "replace", prefix, *hops, netns=self.tor)

    def pinning(self, name: str, chained: bool) -> PinningTable:
        return PinningTable(enabled=True, mask=DEFAULT_MARK_MASK, pools=POOLS, protocol=PROTO,
                            host_netns=self.nodes[name], chain_port=PORT if chained else None)

    def chain(self, name: str) -> DaisyChain:
        return DaisyChain(port=PORT, protocol=PROTO, mark=chain_mark(DEFAULT_MARK_MASK), mask=DEFAULT_MARK_MASK,
                          host_netns=self.nodes[name])


def _link(a: str, b: str, a_name: str, b_name: str, a_ips: tuple[str, str], b_ips: tuple[str, str],
          prefixes: tuple[int, int]) -> None:
    sh("ip", "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b, netns=a)
    for netns, dev, (v4, v6) in ((a, a_name, a_ips), (b, b_name, b_ips)):
        sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", netns=netns)
        sh("ip", "addr", "add", f"{v4}/{prefixes[0]}", "dev", dev, netns=netns)
        sh("ip", "addr", "add", f"{v6}/{prefixes[1]}", "dev", dev, "nodad", netns=netns)
        sh("ip", "link", "set", dev, "up", netns=netns)


@pytest.fixture
async def fabric(make_netns: Callable[[str], str]) -> AsyncIterator[Fabric]:
    client, tor = make_netns("client"), make_netns("tor")
    _link(tor, client, "c0", "eth0", ("192.0.2.1", "2001:db8:ffff::1"), ("192.0.2.2", "2001:db8:ffff::2"), (30, 64))
    sh("ip", "route", "add", "default", "via", "192.0.2.1", netns=client)
    sh("ip", "-6", "route", "add", "default", "via", "2001:db8:ffff::1", netns=client)
    # Every netns shares one kernel: each router gets its own hash seed (notes/cross-node.md).
    for netns, seed in ((tor, 11), (client, 12)):
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                           ("net.ipv4.fib_multipath_hash_policy", "1"), ("net.ipv6.fib_multipath_hash_policy", "1"),
                           ("net.ipv4.fib_multipath_hash_seed", str(seed))):
            sh("sysctl", "-qw", f"{key}={value}", netns=netns)
    nodes, pods = {}, {}
    for index, (name, (v4, tor_v4, v6, tor_v6)) in enumerate(NODES.items()):
        node = make_netns(name)
        nodes[name] = node
        _link(tor, node, f"n{index}", "uplink", (tor_v4, tor_v6), (v4, v6), (30, 64))
        sh("ip", "route", "add", "default", "via", tor_v4, netns=node)
        sh("ip", "-6", "route", "add", "default", "via", tor_v6, netns=node)
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                           ("net.ipv4.conf.all.rp_filter", "1"), ("net.ipv4.conf.default.rp_filter", "1"),
                           ("net.ipv4.fib_multipath_hash_policy", "3"),
                           ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
                           ("net.ipv4.fib_multipath_hash_seed", str(21 + index))):
            sh("sysctl", "-qw", f"{key}={value}", netns=node)
        pod = plumb_pod(node, make_netns("pod"), f"chain-{name}", [f"203.0.113.{10 + index}",
                                                                   f"2001:db8:200::{10 + index}"],
                        list(ANYCAST.values()))
        sh("sysctl", "-qw", f"net.ipv4.conf.{pod.host_ifname}.rp_filter=2", netns=node)
        for version in (4, 6):
            via = next(ip for ip in pod.ips if ip.version == version)
            prefix = f"{ANYCAST[version]}/{32 if version == 4 else 128}"
            sh("ip", f"-{version}", "route", "replace", prefix, "proto", str(PROTO), "via", str(via), "dev",
               pod.host_ifname, "onlink", netns=node)
        pods[name] = pod
    yield Fabric(client, tor, nodes, pods)


async def _set_up(fabric: Fabric, chained: bool, members: list[Member] = MEMBERS) -> None:
    for name in fabric.nodes:
        table = fabric.pinning(name, chained)
        await table.adopt([PodPin(1, fabric.pods[name].host_ifname, fabric.pods[name].ips)])
        if chained:
            plan = plan_chain(members, name, DaisyChainConfig(port=PORT), POOLS)
            changes = await fabric.chain(name).apply(plan)
            assert changes.links == 2 and changes.rules == 4 and changes.peers == 1, changes


async def _through_fabric_rehash(fabric: Fabric, version: int) -> tuple[list[Flow], dict[str, Counter[str]]]:
    """Flows over both nodes through: node-b away, back, node-a away. Returns the flows
    and, per phase, the pods that new connections reached."""
    servers = EchoServers()
    new: dict[str, Counter[str]] = {}
    try:
        for name, pod in fabric.pods.items():
            await servers.start(f"web-{name[-1]}", pod.netns, [ANYCAST[version]])
        fabric.tor_route(version, ["node-a", "node-b"])
        stop = asyncio.Event()
        flows = [asyncio.create_task(long_lived_tcp(fabric.client, ANYCAST[version], stop)) for _ in range(FLOWS)]
        await asyncio.sleep(1.0)
        for phase, names in (("b away", ["node-a"]), ("both", ["node-a", "node-b"]), ("a away", ["node-b"])):
            fabric.tor_route(version, names)
            await asyncio.sleep(1.2)
            new[phase] = Counter([await one_request(fabric.client, ANYCAST[version]) for _ in range(8)])
        stop.set()
        return [await flow for flow in flows], new
    finally:
        await servers.close()


@pytest.mark.parametrize(("version", "underlay"), [(4, 4), (6, 4), (4, 6)])
async def test_chained_flows_stay_on_their_pod_through_the_fabric_rehash(fabric: Fabric, version: int,
                                                                        underlay: int) -> None:
    """``underlay``: the nodes' InternalIPs the ring uses (IPv4, or IPv6 for an IPv6-only cluster)."""
    await _set_up(fabric, chained=True, members=MEMBERS if underlay == 4 else MEMBERS_V6)
    flows, new = await _through_fabric_rehash(fabric, version)
    on = Counter(f.pod for f in flows)
    assert on["web-a"] and on["web-b"], f"the ToR spread the flows over both nodes: {on}"
    broken = [f for f in flows if not f.kept]
    assert not broken, f"{len(broken)}/{len(flows)} broken: {Counter(f.error for f in broken)}"
    assert all(f.replies >= 25 for f in flows), [f.replies for f in flows]
    # New connections go where the fabric sends them: never along the chain.
    assert new["b away"] == Counter({"web-a": 8}) and new["a away"] == Counter({"web-b": 8}), new
    for name in fabric.nodes:
        listing = sh("nft", "list", "chain", "inet", "flock", "prerouting", netns=fabric.nodes[name])
        assert "along the daisy chain" in listing


@pytest.mark.parametrize("version", [4])
async def test_without_the_chain_the_moved_flows_are_reset(fabric: Fabric, version: int) -> None:
    await _set_up(fabric, chained=False)
    flows, _ = await _through_fabric_rehash(fabric, version)
    broken = [f for f in flows if not f.kept]
    assert broken and {f.error for f in broken} <= {"reset", "closed"}, Counter(f.error for f in flows)


async def test_the_ring_is_adopted_without_writes_and_taken_down_whole(fabric: Fabric) -> None:
    await _set_up(fabric, chained=True)
    node = fabric.nodes["node-a"]
    plan = plan_chain(MEMBERS, "node-a", DaisyChainConfig(port=PORT), POOLS)
    assert (await fabric.chain("node-a").apply(plan)).total == 0
    links = sh("ip", "-d", "link", "show", "type", "vxlan", netns=node)
    assert "flkdc1" in links and "flkdcl" in links and "id 15797249" in links and "remote 192.0.2.10" in links
    assert "lookup 1100001" in sh("ip", "rule", "show", netns=node)
    assert "198.51.100.0/24 via 169.254.0.1 dev flkdc1" in sh("ip", "route", "show", "table", "1100001",
                                                              netns=node)
    assert "192.0.2.10" in sh("nft", "list", "set", "inet", "flock", "chain_peers_v4", netns=node)
    # The ring shrank to this node alone: nothing of the chain is left.
    await fabric.chain("node-a").apply(plan_chain(MEMBERS[:1], "node-a", DaisyChainConfig(port=PORT), POOLS))
    assert "flkdc" not in sh("ip", "link", "show", netns=node)
    assert "11000" not in sh("ip", "rule", "show", netns=node) + sh("ip", "-6", "rule", "show", netns=node)
    assert "192.0.2.10" not in sh("nft", "list", "set", "inet", "flock", "chain_peers_v4", netns=node)
