"""NetlinkRoutes against a real kernel: a node namespace wired to three pod namespaces.

Each pod has eth0 192.0.2.1x + 2001:db8::1x and the anycast addresses 198.51.100.10 and
2001:db8:100::10 on lo; the node reaches it over its veth ``flock<8hex>``. Routes are
checked with ``ip -j`` in the node namespace, independently of the adapter's own dump.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flock.adapters.netlink import NetlinkRoutes
from flock.core.model import IPAddress, Nexthop, Nexthops, RouteTable, sorted_nexthops
from flock.core.routediff import DeleteRoute, ReplaceRoute, RouteEdit
from flock.errors import RouteError
from flock.testing import FakeRoutes
from tests.support import netns as netns_support
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import plumb_pod, sh

PROTO = 201
A = ipaddress.ip_address
ANY4, ANY6 = A("198.51.100.10"), A("2001:db8:100::10")


@dataclasses.dataclass
class Lab:
    node: str
    pods: list[netns_support.PlumbedPod]
    routes: NetlinkRoutes

    def hop(self, pod: int, version: int) -> Nexthop:
        """Pod ``pod``'s next hop of one IP family."""
        the_pod = self.pods[pod]
        via = next(ip for ip in the_pod.ips if ip.version == version)
        return Nexthop(via, the_pod.host_ifname)

    def hops(self, *pods: int, version: int) -> Nexthops:
        return sorted_nexthops(self.hop(pod, version) for pod in pods)

    def shown(self, address: IPAddress, *extra: str) -> list[dict[str, Any]]:
        """``ip -j route show <address>/<len> [extra]`` in the node namespace."""
        family = "-4" if address.version == 4 else "-6"
        out = sh("ip", "-n", self.node, family, "-j", "route", "show",
                 f"{address}/{address.max_prefixlen}", *extra)
        return list(json.loads(out or "[]"))


@pytest.fixture
async def lab(make_netns: Callable[[str], str]) -> AsyncIterator[Lab]:
    node = make_netns("node")
    pods = [
        plumb_pod(node, make_netns("pod"), f"netlink-test-{n}",
                  ips=[f"192.0.2.1{n}", f"2001:db8::1{n}"], anycast=[str(ANY4), str(ANY6)])
        for n in range(1, 4)
    ]
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=node, timeout=30)
    await routes.start()
    try:
        yield Lab(node, pods, routes)
    finally:
        await routes.close()


async def apply_ok(routes: NetlinkRoutes, *edits: RouteEdit) -> None:
    errors = await routes.apply(edits)
    assert errors == []


def assert_plain(route: dict[str, Any], hop: Nexthop) -> None:
    assert "nexthops" not in route, route
    assert route["gateway"] == str(hop.via)
    assert route["dev"] == hop.dev


def assert_multipath(route: dict[str, Any], hops: Nexthops) -> None:
    assert "gateway" not in route, route
    shown = sorted((h["gateway"], h["dev"]) for h in route["nexthops"])
    assert shown == sorted((str(h.via), h.dev) for h in hops)


# -- route shapes ------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_one_pod_gets_a_plain_via_route(lab: Lab, version: int) -> None:
    address = ANY4 if version == 4 else ANY6
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, version=version)))

    (route,) = lab.shown(address)
    assert_plain(route, lab.hop(0, version))
    assert route["protocol"] == str(PROTO)
    assert route.get("metric", 0) == (0 if version == 4 else 1024)  # the kernel's default


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_pods_sharing_an_address_get_one_multipath_route(lab: Lab, version: int) -> None:
    address = ANY4 if version == 4 else ANY6
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, version=version)))
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, 1, version=version)))

    (route,) = lab.shown(address)
    assert_multipath(route, lab.hops(0, 1, version=version))
    assert (await lab.routes.dump()).advertised == {address: lab.hops(0, 1, version=version)}


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_replacing_back_to_one_pod_restores_the_plain_shape(lab: Lab, version: int) -> None:
    address = ANY4 if version == 4 else ANY6
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, 1, 2, version=version)))
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(2, version=version)))

    (route,) = lab.shown(address)
    assert_plain(route, lab.hop(2, version))


# -- deletes -----------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_delete_removes_the_route(lab: Lab, version: int) -> None:
    address = ANY4 if version == 4 else ANY6
    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, 1, version=version)))
    await apply_ok(lab.routes, DeleteRoute(address))

    assert lab.shown(address) == []
    assert (await lab.routes.dump()).advertised == {}


@pytest.mark.netns
async def test_deleting_an_absent_route_succeeds(lab: Lab) -> None:
    before = lab.routes.writes
    await apply_ok(lab.routes, DeleteRoute(ANY4), DeleteRoute(ANY6))
    assert lab.routes.writes == before + 2


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_a_route_of_another_protocol_is_never_deleted_nor_dumped(
        lab: Lab, version: int) -> None:
    address = ANY4 if version == 4 else ANY6
    hop = lab.hop(1, version)
    prefix = f"{address}/{address.max_prefixlen}"
    # Alone, then beside flock's own route (a different metric lets them coexist).
    sh("ip", "-n", lab.node, "route", "add", prefix, "via", str(hop.via), "dev", hop.dev,
       "proto", "static", "metric", "100")
    assert (await lab.routes.dump()).advertised == {}
    await apply_ok(lab.routes, DeleteRoute(address))
    assert [r["protocol"] for r in lab.shown(address)] == ["static"]

    await apply_ok(lab.routes, ReplaceRoute(address, lab.hops(0, version=version)))
    assert (await lab.routes.dump()).advertised == {address: lab.hops(0, version=version)}
    await apply_ok(lab.routes, DeleteRoute(address))
    (left,) = lab.shown(address)
    assert left["protocol"] == "static"
    assert_plain(left, hop)


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
async def test_adding_a_prefix_held_by_another_protocol_refuses_and_leaves_it(
        lab: Lab, version: int) -> None:
    # The kernel's replace ignores rtm_protocol, so flock adds (create-exclusive) any
    # prefix it does not route yet: a foreign route with the same key must survive.
    address = ANY4 if version == 4 else ANY6
    hop = lab.hop(1, version)
    sh("ip", "-n", lab.node, "route", "add", f"{address}/{address.max_prefixlen}", "via", str(hop.via),
       "dev", hop.dev, "proto", "static")
    errors = await lab.routes.apply([ReplaceRoute(address, lab.hops(0, version=version), new=True)])
    assert len(errors) == 1 and "not flock's" in str(errors[0]) and "leaves it alone" in str(errors[0])
    (left,) = lab.shown(address)
    assert left["protocol"] == "static"
    assert_plain(left, hop)


# -- dump --------------------------------------------------------------------------


@pytest.mark.netns
async def test_dump_round_trips_what_apply_wrote(lab: Lab) -> None:
    table: RouteTable = {
        A("198.51.100.10"): lab.hops(0, 1, 2, version=4),
        A("198.51.100.11"): lab.hops(1, version=4),
        A("203.0.113.7"): lab.hops(0, 2, version=4),
        A("2001:db8:100::10"): lab.hops(0, 1, 2, version=6),
        A("2001:db8:100::11"): lab.hops(2, version=6),
        A("2001:db8:100::12"): lab.hops(1, 2, version=6),
    }
    await apply_ok(lab.routes, *(ReplaceRoute(a, hops) for a, hops in table.items()))
    assert (await lab.routes.dump()).advertised == table


@pytest.mark.netns
async def test_dump_ignores_routes_of_its_protocol_that_flock_would_not_write(
        lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    await apply_ok(lab.routes, ReplaceRoute(ANY4, lab.hops(0, version=4)))
    dev = lab.pods[0].host_ifname
    proto = ("proto", str(PROTO))
    sh("ip", "-n", lab.node, "route", "add", "198.51.100.0/24", "via", "192.0.2.11",
       "dev", dev, *proto)  # not a host route
    sh("ip", "-n", lab.node, "route", "add", "198.51.100.12/32", "dev", dev, *proto)  # a pod's own: expected
    sh("ip", "-n", lab.node, "-6", "route", "add", "2001:db8:100::12/128",
       "via", "2001:db8::11", "dev", dev, "metric", "7", *proto)  # another metric
    sh("ip", "-n", lab.node, "route", "add", "198.51.100.13/32", "via", "192.0.2.11",
       "dev", dev, "table", "100", *proto)  # another table: not ours to manage, no warning

    with caplog.at_level(logging.WARNING, logger="flock.adapters.netlink"):
        assert (await lab.routes.dump()).advertised == {ANY4: lab.hops(0, version=4)}
        warned = caplog.text
        caplog.clear()
        await lab.routes.dump()
    assert "198.51.100.0/24: not a host route" in warned
    assert "198.51.100.12" not in warned
    assert "2001:db8:100::12/128: metric 7" in warned
    assert "198.51.100.13" not in warned
    assert caplog.text == "", "the same problems are warned about once, not every dump"


# -- failures ----------------------------------------------------------------------


@pytest.mark.netns
async def test_a_failed_edit_is_reported_and_the_others_still_apply(lab: Lab) -> None:
    good = lab.hops(0, version=4)
    # flock's next hops are onlink: the kernel takes any gateway on the link but a local address.
    sh("ip", "-n", lab.node, "addr", "add", "203.0.113.99/32", "dev", "lo")
    errors = await lab.routes.apply([
        ReplaceRoute(A("198.51.100.10"), good),
        ReplaceRoute(A("198.51.100.11"), (Nexthop(A("192.0.2.11"), "flockdeadbeef"),)),
        ReplaceRoute(A("198.51.100.12"), (Nexthop(A("203.0.113.99"), lab.hop(0, 4).dev),)),
        ReplaceRoute(A("2001:db8:100::10"), lab.hops(1, version=6)),
    ])

    assert [str(e) for e in errors] == [
        "replace 198.51.100.11/32 via 192.0.2.11 dev flockdeadbeef: "
        "No such device (netlink 19): flockdeadbeef",
        f"replace 198.51.100.12/32 via 203.0.113.99 dev {lab.hop(0, 4).dev}: "
        "Invalid argument (netlink 22)",
    ]
    assert all(isinstance(e, RouteError) for e in errors)
    assert (await lab.routes.dump()).advertised == {A("198.51.100.10"): good,
                                       A("2001:db8:100::10"): lab.hops(1, version=6)}


@pytest.mark.netns
async def test_a_batch_of_600_edits_with_bad_ones_inside_keeps_every_result(lab: Lab) -> None:
    base = int(A("2001:db8:100::"))
    addresses = [ipaddress.IPv6Address(base + n) for n in range(1, 601)]
    broken = (Nexthop(A("2001:db8::11"), "flockdeadbeef"),)
    edits: list[RouteEdit] = [ReplaceRoute(a, lab.hops(n % 3, version=6))
                              for n, a in enumerate(addresses)]
    edits[1] = edits[-1] = ReplaceRoute(addresses[1], broken)
    before = lab.routes.writes

    errors = await lab.routes.apply(edits)

    assert len(errors) == 2
    assert all("No such device (netlink 19): flockdeadbeef" in str(e) for e in errors)
    assert lab.routes.writes == before + len(edits) - 2  # an unknown dev is never sent
    written = {e.address: e.nexthops for e in edits if isinstance(e, ReplaceRoute)
               and e.nexthops != broken}
    assert (await lab.routes.dump()).advertised == written


@pytest.mark.netns
async def test_a_veth_recreated_under_the_same_name_is_found_again(lab: Lab) -> None:
    pod = lab.pods[0]
    await apply_ok(lab.routes, ReplaceRoute(ANY4, lab.hops(0, version=4)))  # caches the index
    sh("ip", "-n", lab.node, "link", "delete", pod.host_ifname)  # takes its routes along
    plumb_pod(lab.node, pod.netns, pod.container_id, ips=[str(ip) for ip in pod.ips],
              anycast=[])  # same name, new ifindex

    await apply_ok(lab.routes, ReplaceRoute(ANY4, lab.hops(0, 1, version=4)))
    assert (await lab.routes.dump()).advertised == {ANY4: lab.hops(0, 1, version=4)}


@pytest.mark.netns
async def test_start_refuses_a_missing_namespace_and_does_not_create_it() -> None:
    missing = f"flk-missing-{os.getpid()}-{secrets.token_hex(2)}"
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=missing, timeout=30)
    with pytest.raises(RouteError, match=f"open netlink in netns {missing}"):
        await routes.start()
    assert missing not in sh("ip", "netns", "list")


# -- sysctls -----------------------------------------------------------------------


@pytest.mark.netns
async def test_multipath_hash_policy_is_set_for_both_families_inside_the_namespace(
        lab: Lab) -> None:
    keys = ("net.ipv4.fib_multipath_hash_policy", "net.ipv6.fib_multipath_hash_policy",
            "net.ipv4.fib_multipath_hash_fields", "net.ipv6.fib_multipath_hash_fields")
    root_before = sh("sysctl", "-n", *keys)

    assert await lab.routes.set_multipath_hash_policy() == []

    # Policy 3 on the 5-tuple (0x37: addresses, protocol, ports) on this kernel (>= 5.12).
    assert sh("sysctl", "-n", *keys, netns=lab.node).split() == ["3", "3", "55", "55"]  # 55 == 0x37
    assert sh("sysctl", "-n", *keys) == root_before, "the root namespace was touched"


# -- the route monitor (tests/support/netlink_monitor.py) ---------------------------


@pytest.mark.netns
async def test_route_monitor_sees_a_write(lab: Lab) -> None:
    with watch_routes(lab.node) as seen:
        await apply_ok(lab.routes, ReplaceRoute(ANY4, lab.hops(0, version=4)),
                       DeleteRoute(ANY4))
    assert [str(c) for c in seen.changes(PROTO)] == [
        f"new {ANY4}/32 proto {PROTO}", f"del {ANY4}/32 proto {PROTO}"]


@pytest.mark.netns
async def test_route_monitor_sees_nothing_when_nothing_happens(lab: Lab) -> None:
    await apply_ok(lab.routes, ReplaceRoute(ANY6, lab.hops(0, 1, version=6)))
    await asyncio.sleep(0.2)  # let the write's own notifications pass
    with watch_routes(lab.node, settle=1.0) as seen:
        await asyncio.sleep(0.5)
    assert seen.changes() == []


@pytest.mark.netns
async def test_a_dump_writes_nothing(lab: Lab) -> None:
    await apply_ok(lab.routes, ReplaceRoute(ANY4, lab.hops(0, 1, version=4)))
    writes = lab.routes.writes
    with watch_routes(lab.node, settle=1.0) as seen:
        await lab.routes.dump()
    assert seen.changes() == []
    assert lab.routes.writes == writes


# -- the fake ----------------------------------------------------------------------


async def test_fake_routes_record_edits_and_fail_on_demand() -> None:
    # That it behaves like NetlinkRoutes is tests/contract's job (both run the same checks).
    hop = Nexthop(A("192.0.2.11"), "flock0000000a")
    fake = FakeRoutes(fail={A("198.51.100.11"): "Network is unreachable (netlink 101)"})
    edits: list[RouteEdit] = [ReplaceRoute(ANY4, (hop,)), ReplaceRoute(A("198.51.100.11"), (hop,)),
                              DeleteRoute(ANY6)]
    errors = await fake.apply(edits)

    assert [str(e) for e in errors] == [
        "replace 198.51.100.11/32 via 192.0.2.11 dev flock0000000a: "
        "Network is unreachable (netlink 101)"]
    assert fake.applied == [edits[0], edits[2]]
    assert (await fake.dump()).advertised == {ANY4: (hop,)}
    assert fake.writes == 3
