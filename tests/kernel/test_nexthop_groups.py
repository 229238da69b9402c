"""Resilient next-hop groups in a real kernel (flock.adapters.nhgroups, through NetlinkRoutes).

    client netns ── node netns (anycast route to 3 pods) ──┬─ web-0  lo: anycast
      192.0.2.2        192.0.2.1                           ├─ web-1  lo: anycast
      2001:db8:ffff::2 2001:db8:ffff::1                    └─ web-2  lo: anycast

The flow test sends one UDP datagram on each of many 5-tuples (a connected socket per
flow, no conntrack involved: nothing pins them), records which pod answered, takes web-0
out of the prefix as the agent does, and asks again on the same sockets. With a
resilient group no flow of web-1 or web-2 moves; with plain multipath some do (removing
the first of three next hops re-hashes survivors: shared/notes/drain.md), so the test can
fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.nhgroups import DEFAULT_BUCKETS, id_ranges
from flock.core.model import IPAddress, Nexthop, Nexthops, sorted_nexthops
from flock.core.routediff import DeleteRoute, KernelRoutes, ReplaceRoute, WithdrawRoute, diff_routes
from tests.support.flows import PORT, EchoServers, socket_in
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import PlumbedPod, plumb_pod, sh
from tests.support.nexthop_monitor import watch_nexthops

pytestmark = pytest.mark.netns

ANYCAST = {4: ipaddress.ip_address("198.51.100.10"), 6: ipaddress.ip_address("2001:db8:100::10")}
PROTO = 201
MEMBERS, GROUPS = id_ranges(PROTO)
FLOWS = 150


@dataclasses.dataclass
class Lab:
    client: str
    node: str
    pods: list[PlumbedPod]
    names: dict[str, str]  # host veth -> pod name

    def hops(self, version: int, *pods: int) -> Nexthops:
        return sorted_nexthops(Nexthop(next(ip for ip in self.pods[i].ips if ip.version == version),
                                       self.pods[i].host_ifname) for i in pods)

    def routes(self, mode: str, **kwargs: Any) -> NetlinkRoutes:
        return NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=self.node,
                             timeout=30, nexthop_groups=mode, **kwargs)

    def nexthops(self) -> list[dict[str, Any]]:
        return list(json.loads(sh("ip", "-j", "-d", "nexthop", "show", netns=self.node) or "[]"))

    def route(self, version: int, *extra: str) -> list[dict[str, Any]]:
        address = ANYCAST[version]
        return list(json.loads(sh("ip", f"-{version}", "-j", "route", "show",
                                  f"{address}/{address.max_prefixlen}", *extra, netns=self.node) or "[]"))


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
    sh("ip", "link", "set", "lo", "up", netns=node)
    sh("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1", netns=client)
    sh("ip", "-6", "route", "add", "2001:db8:100::/64", "via", "2001:db8:ffff::1", netns=client)
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                       ("net.ipv4.fib_multipath_hash_policy", "3"), ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
                       ("net.ipv6.fib_multipath_hash_policy", "3"), ("net.ipv6.fib_multipath_hash_fields", "0x0037")):
        sh("sysctl", "-qw", f"{key}={value}", netns=node)
    pods = [plumb_pod(node, make_netns("pod"), f"groups-{index}", [f"203.0.113.1{index}", f"2001:db8:200::1{index}"],
                      [str(a) for a in ANYCAST.values()]) for index in range(3)]
    yield Lab(client, node, pods, {pod.host_ifname: f"web-{i}" for i, pod in enumerate(pods)})


async def _ask(sockets: list[socket.socket]) -> list[str]:
    """One datagram on each flow; the pod that answered each (or "timeout")."""
    loop = asyncio.get_running_loop()

    async def one(sock: socket.socket, serial: int) -> str:
        await loop.sock_sendall(sock, str(serial).encode())
        try:
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 3)
                pod, _, echoed = data.decode().partition(" ")
                if echoed == str(serial):
                    return pod
        except TimeoutError:
            return "timeout"

    return list(await asyncio.gather(*(one(sock, n) for n, sock in enumerate(sockets))))


async def _flows_moved(lab: Lab, mode: str, version: int) -> tuple[int, int, Counter[str], Counter[str]]:
    """(flows of web-1 and web-2 that moved when web-0 left, how many there were, pods before, after)."""
    address = ANYCAST[version]
    servers = EchoServers()
    routes = lab.routes(mode)
    await routes.start()
    sockets: list[socket.socket] = []
    try:
        assert routes.mode == mode, routes.fallback
        for index, pod in enumerate(lab.pods):
            await servers.start(f"web-{index}", pod.netns, [str(address)])
        assert await routes.apply([ReplaceRoute(address, lab.hops(version, 0, 1, 2), new=True)]) == []
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        for _ in range(FLOWS):
            sock = socket_in(lab.client, family, socket.SOCK_DGRAM)
            sock.connect((str(address), PORT))
            sockets.append(sock)
        before = await _ask(sockets)
        assert "timeout" not in before, Counter(before)
        assert await routes.apply([ReplaceRoute(address, lab.hops(version, 1, 2))]) == []  # web-0 leaves
        after = await _ask(sockets)
        survivors = [(b, a) for b, a in zip(before, after, strict=True) if b != "web-0"]
        moved = sum(b != a for b, a in survivors)
        return moved, len(survivors), Counter(before), Counter(after)
    finally:
        for sock in sockets:
            sock.close()
        await servers.close()
        await routes.close()


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 6])
async def test_a_pod_leaving_a_resilient_group_moves_no_other_pods_flow(lab: Lab, version: int) -> None:
    moved, survivors, before, after = await _flows_moved(lab, "resilient", version)
    print(f"\nresilient IPv{version}: {moved}/{survivors} flows of the staying pods moved; "
          f"before {dict(before)}, after {dict(after)}")
    assert before["web-0"] > 0 and survivors > 0, f"ECMP did not spread: {dict(before)}"
    assert moved == 0
    assert after["web-0"] == 0 and "timeout" not in after, dict(after)


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 6])
async def test_the_same_with_plain_multipath_moves_other_pods_flows(lab: Lab, version: int) -> None:
    # The control: it shows the test above can fail.
    moved, survivors, before, after = await _flows_moved(lab, "multipath", version)
    print(f"\nmultipath IPv{version}: {moved}/{survivors} flows of the staying pods moved; "
          f"before {dict(before)}, after {dict(after)}")
    assert before["web-0"] > 0 and survivors > 0, f"ECMP did not spread: {dict(before)}"
    assert moved > 0


@pytest.mark.parametrize("version", [4, 6])
async def test_a_prefix_routes_through_a_resilient_group_changed_in_place(lab: Lab, version: int) -> None:
    routes = lab.routes("resilient")
    await routes.start()
    address = ANYCAST[version]
    foreign = ("ip", "nexthop", "add", "id", "10", "dev", "uplink")
    sh(*foreign, netns=lab.node)
    try:
        assert await routes.apply([ReplaceRoute(address, lab.hops(version, 0, 1), new=True)]) == []
        (route,) = lab.route(version)
        group_id = route["nhid"]
        assert group_id in GROUPS
        assert sorted(h["dev"] for h in route["nexthops"]) == sorted(p.host_ifname for p in lab.pods[:2])
        assert all("onlink" in h["flags"] for h in route["nexthops"]), route
        objects = {o["id"]: o for o in lab.nexthops()}
        group = objects[group_id]
        assert group["type"] == "resilient" and group["resilient_args"]["buckets"] == DEFAULT_BUCKETS, group
        assert group["resilient_args"]["idle_timer"] == 10 and group["resilient_args"]["unbalanced_timer"] == 60
        members = [m["id"] for m in group["group"]]
        assert all(m in MEMBERS and objects[m]["protocol"] == str(PROTO) and "onlink" in objects[m]["flags"]
                   for m in members), objects

        writes = routes.writes
        with watch_routes(lab.node) as seen_routes, watch_nexthops(lab.node) as seen:
            assert await routes.apply([ReplaceRoute(address, lab.hops(version, 0, 1, 2))]) == []
        assert seen.writes == [("new", next(iter(set(o["id"] for o in lab.nexthops()) - set(objects)))),
                               ("new", group_id)], "a new member, then the group in place"
        assert routes.writes - writes == 2, "the route is not written again"
        # The kernel announces the route with its new next hops itself: that is what BIRD learns.
        assert [str(c) for c in seen_routes.changes()] == [f"new {address}/{address.max_prefixlen} proto {PROTO}"]
        assert lab.route(version)[0]["nhid"] == group_id

        assert await routes.apply([ReplaceRoute(address, lab.hops(version, 2))]) == []
        (route,) = lab.route(version)
        assert route["nhid"] == group_id and _devs(route) == [lab.pods[2].host_ifname]
        assert await routes.dump() == KernelRoutes({address: lab.hops(version, 2)})

        assert await routes.apply([WithdrawRoute(address, lab.hops(version, 2))]) == []
        (route,) = lab.route(version, "proto", "202")
        assert route["nhid"] == group_id, "a withdrawal re-tags the route and keeps the group"
        assert await routes.apply([ReplaceRoute(address, lab.hops(version, 1, 2), last_resort=True)]) == []
        (route,) = lab.route(version, "proto", "203")
        assert route["nhid"] == group_id, "last resort: the same group"
        assert await routes.apply([DeleteRoute(address, last_resort=True)]) == []
        assert lab.route(version) == []
        assert [o["id"] for o in lab.nexthops()] == [10], "flock's objects are gone, the foreign one stays"
    finally:
        await routes.close()


async def test_a_restart_with_unchanged_state_writes_nothing(lab: Lab) -> None:
    routes = lab.routes("resilient")
    await routes.start()
    desired = {ANYCAST[4]: lab.hops(4, 0, 1, 2), ANYCAST[6]: lab.hops(6, 1)}
    assert await routes.apply([ReplaceRoute(a, h, new=True) for a, h in desired.items()]) == []
    await routes.close()

    with watch_routes(lab.node) as seen_routes, watch_nexthops(lab.node) as seen:
        again = lab.routes("resilient")
        await again.start()
        kernel = await again.dump()
        edits = diff_routes(desired, kernel)
        await again.close()
    assert again.mode == "resilient" and edits == [] and kernel.advertised == desired
    assert again.writes == 0 and seen.writes == [] and seen_routes.changes() == []


async def test_switching_modes_rewrites_the_routes_and_removes_the_groups(lab: Lab) -> None:
    desired = {ANYCAST[4]: lab.hops(4, 0, 1), ANYCAST[6]: lab.hops(6, 0, 1)}
    routes = lab.routes("multipath")
    await routes.start()
    assert await routes.apply([ReplaceRoute(a, h, new=True) for a, h in desired.items()]) == []
    await routes.close()

    for mode in ("resilient", "multipath"):
        routes = lab.routes(mode)
        await routes.start()
        kernel = await routes.dump()
        assert kernel.reshape == frozenset(desired), mode
        assert await routes.apply(diff_routes(desired, kernel)) == []
        kernel = await routes.dump()
        await routes.close()
        assert kernel.advertised == desired and kernel.reshape == frozenset(), mode
        assert ("nhid" in lab.route(4)[0]) == (mode == "resilient")
        assert bool(lab.nexthops()) == (mode == "resilient"), lab.nexthops()


async def test_a_device_deleted_under_flock_is_repaired_from_the_dump(lab: Lab) -> None:
    routes = lab.routes("resilient")
    await routes.start()
    try:
        address = ANYCAST[4]
        assert await routes.apply([ReplaceRoute(address, lab.hops(4, 0, 1), new=True)]) == []
        sh("ip", "link", "del", lab.pods[0].host_ifname, netns=lab.node)  # the kernel drops its member
        kernel = await routes.dump()
        assert kernel.advertised == {address: lab.hops(4, 1)}, "the group shrank; the route stays"
        sh("ip", "link", "del", lab.pods[1].host_ifname, netns=lab.node)  # the last member: group and route go
        kernel = await routes.dump()
        assert kernel.advertised == {}
        assert await routes.apply(diff_routes({address: lab.hops(4, 2)}, kernel)) == []
        (route,) = lab.route(4)
        assert _devs(route) == [lab.pods[2].host_ifname] and route["nhid"] in GROUPS
        assert len(lab.nexthops()) == 2, "one member, one group: nothing stale"
    finally:
        await routes.close()


async def test_without_kernel_support_it_falls_back_to_multipath(lab: Lab) -> None:
    # Routes through groups would be dumped without next hops: BIRD could not learn them.
    sh("sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0", netns=lab.node)
    routes = lab.routes("resilient")
    await routes.start()
    try:
        assert routes.mode == "multipath" and "nexthop_compat_mode" in (routes.fallback or "")
        assert await routes.apply([ReplaceRoute(ANYCAST[4], lab.hops(4, 0, 1), new=True)]) == []
        assert "nhid" not in lab.route(4)[0] and lab.nexthops() == []
    finally:
        await routes.close()


async def test_the_start_up_probe_leaves_nothing_behind(lab: Lab) -> None:
    with watch_nexthops(lab.node) as seen:
        routes = lab.routes("resilient")
        await routes.start()
        await routes.close()
    assert routes.mode == "resilient" and routes.fallback is None
    assert [kind for kind, _ in seen.writes] == ["new", "new", "del", "del"] and lab.nexthops() == []


def _devs(route: dict[str, Any]) -> list[str]:
    """The devices of a route's next hops (one is dumped flat for IPv4, as a list for IPv6)."""
    return sorted(hop["dev"] for hop in route.get("nexthops") or [route])


def _ids(objects: list[dict[str, Any]]) -> set[int]:
    return {o["id"] for o in objects}


async def test_objects_in_flocks_range_of_another_protocol_are_left_alone(lab: Lab) -> None:
    theirs = MEMBERS.start + 5
    sh("ip", "nexthop", "add", "id", str(theirs), "dev", "uplink", "proto", "99", netns=lab.node)
    routes = lab.routes("resilient")
    await routes.start()
    try:
        address: IPAddress = ANYCAST[4]
        hops = lab.hops(4, 0, 1, 2)
        assert await routes.apply([ReplaceRoute(address, hops, new=True)]) == []
        assert await routes.apply([DeleteRoute(address)]) == []
        await routes.dump()
        assert _ids(lab.nexthops()) == {theirs}
    finally:
        await routes.close()
