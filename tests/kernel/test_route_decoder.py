"""flock.adapters.rtnetlink's RouteDecoder and NexthopNames on real kernel dumps: a node
namespace with two veths and routes of every shape a dump can hold, written with ``ip``
(flock's own writer is not involved), dumped over a raw rtnetlink socket inside it.

The decoder must give exactly what flock wrote or would have written (host routes of its
protocol, plain or multipath, IPv4 or IPv6), name what it would not have written (with
the reason), skip what is not its business (other protocols and tables, device routes),
and give the same result whether it decodes a message or remembers it from the last dump.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from collections.abc import Callable

import pytest

from flock.adapters import rtnetlink as rtnl
from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.core.model import IPAddress, Nexthop, sorted_nexthops
from tests.support.netns import sh

PROTO = 201
OTHER_PROTO = 202
A = ipaddress.ip_address
DEV_A, DEV_B = "flock0000000a", "flock0000000b"
GW4 = {DEV_A: A("192.0.2.2"), DEV_B: A("192.0.2.130")}
GW6 = {DEV_A: A("2001:db8:a::2"), DEV_B: A("2001:db8:b::2")}

# What flock writes: host routes of its protocol, plain or multipath.
GOOD = {
    A("198.51.100.1"): (DEV_A,),
    A("198.51.100.2"): (DEV_A, DEV_B),
    A("2001:db8:100::1"): (DEV_B,),
    A("2001:db8:100::2"): (DEV_A, DEV_B),
}


@dataclasses.dataclass
class Node:
    netns: str
    index: dict[str, int]  # link name -> ifindex

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.netns, *args)

    def hops(self, address: IPAddress) -> tuple[rtnl.Hop, ...]:
        """The (gateway, ifindex) pairs of one of the GOOD routes, in the order written."""
        gateways = GW4 if address.version == 4 else GW6
        return tuple((gateways[dev].packed, self.index[dev]) for dev in GOOD[address])

    async def dump(self, family: int, protocol: int = PROTO, *,
                   strict: bool = True) -> list[tuple[int, bytearray]]:
        """One RTM_GETROUTE dump inside the namespace: table main and ``protocol`` only if
        ``strict`` (the kernel filters), else every route of every table."""
        def run() -> list[tuple[int, bytearray]]:
            with rtnl.RtnlSocket(timeout=10, strict=strict) as sock:
                assert sock.strict == strict
                request = rtnl.RTMSG.pack(family, 0, 0, 0, rtnl.RT_TABLE_MAIN if strict else 0,
                                          protocol if strict else 0, 0, 0, 0)
                return sock.dump(rtnl.RTM_GETROUTE, request)

        return await in_netns(named_netns(self.netns), 20, run)


def route(node: Node, dst: str, how: str, *extra: str) -> None:
    """``ip route add <dst> [extra] <how...>``: ``how`` is a via/dev/nexthop phrase (last:
    ``ip`` takes no option after a ``nexthop``)."""
    node.ip("route", "add", dst, *extra, *how.split())


def via(dev: str, version: int) -> str:
    return f"via {(GW4 if version == 4 else GW6)[dev]} dev {dev}"


@pytest.fixture
def node(make_netns: Callable[[str], str]) -> Node:
    netns = make_netns("node")
    for n, dev in enumerate((DEV_A, DEV_B)):
        sh("ip", "-n", netns, "link", "add", dev, "type", "veth", "peer", "name", f"peer{n}")
        sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", netns=netns)
        sh("ip", "-n", netns, "link", "set", dev, "up")
        sh("ip", "-n", netns, "link", "set", f"peer{n}", "up")
    sh("ip", "-n", netns, "addr", "add", "192.0.2.1/25", "dev", DEV_A)
    sh("ip", "-n", netns, "addr", "add", "192.0.2.129/25", "dev", DEV_B)
    sh("ip", "-n", netns, "addr", "add", "2001:db8:a::1/64", "dev", DEV_A, "nodad")
    sh("ip", "-n", netns, "addr", "add", "2001:db8:b::1/64", "dev", DEV_B, "nodad")
    links = json.loads(sh("ip", "-n", netns, "-j", "link", "show"))
    the_node = Node(netns, {link["ifname"]: link["ifindex"] for link in links})
    for address, devs in GOOD.items():
        hops = " ".join(f"nexthop {via(dev, address.version)}" for dev in devs)
        route(the_node, f"{address}/{address.max_prefixlen}", hops if len(devs) > 1 else via(devs[0], address.version),
              "proto", str(PROTO))
    return the_node


def good_routes(node: Node) -> list[rtnl.DecodedRoute]:
    return [(address, node.hops(address), "") for address in GOOD]


async def decoded(node: Node, decoders: dict[int, rtnl.RouteDecoder] | None = None, *,
                  strict: bool = True) -> list[rtnl.DecodedRoute]:
    """Both families' routes of PROTO, decoded (by ``decoders``, if given: they remember)."""
    decoders = {} if decoders is None else decoders
    found: list[rtnl.DecodedRoute] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        decoder = decoders.setdefault(family, rtnl.RouteDecoder(family, PROTO))
        found += decoder.decode(await node.dump(family, strict=strict))
    return found


# -- what a dump holds -------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.parametrize("strict", [True, False], ids=["kernel-filtered", "every-table"])
async def test_flocks_routes_decode_as_written_plain_and_multipath_both_families(node: Node, strict: bool) -> None:
    # Unfiltered (a kernel without strict checking), the dump also holds the namespace's
    # own routes (connected, local, multicast, other tables): the decoder skips them.
    assert await decoded(node, strict=strict) == good_routes(node)


@pytest.mark.netns
@pytest.mark.parametrize("strict", [True, False], ids=["kernel-filtered", "every-table"])
async def test_routes_that_are_not_flocks_business_are_skipped_silently(node: Node, strict: bool) -> None:
    proto = ("proto", str(PROTO))
    route(node, "198.51.100.3/32", via(DEV_A, 4), "proto", "static")  # another protocol
    route(node, "2001:db8:100::3/128", via(DEV_A, 6), "proto", str(OTHER_PROTO))
    route(node, "198.51.100.4/32", f"dev {DEV_A}", *proto)  # a pod's own route on its veth
    route(node, "2001:db8:100::4/128", f"dev {DEV_B}", *proto)
    route(node, "198.51.100.5/32", via(DEV_A, 4), "table", "100", *proto)  # another table
    route(node, "2001:db8:100::5/128", via(DEV_A, 6), "table", "100", *proto)

    assert await decoded(node, strict=strict) == good_routes(node)


@pytest.mark.netns
async def test_routes_of_flocks_protocol_it_would_not_write_come_with_the_reason(node: Node) -> None:
    proto = ("proto", str(PROTO))
    route(node, "198.51.100.128/25", via(DEV_A, 4), *proto)
    route(node, "2001:db8:100::6/128", via(DEV_A, 6), "metric", "7", *proto)
    node.ip("route", "add", "blackhole", "198.51.100.6/32", *proto)
    node.ip("nexthop", "add", "id", "10", *via(DEV_B, 4).split())
    route(node, "198.51.100.7/32", "nhid 10", *proto)

    routes = await decoded(node)

    assert [r for r in routes if not r[2]] == good_routes(node)
    assert sorted(r[2] for r in routes if r[2]) == [
        "198.51.100.128/25: not a host route",
        "198.51.100.6/32: route type 6, not unicast",
        "198.51.100.7/32: uses a nexthop object, not a gateway",
        "2001:db8:100::6/128: metric 7, flock writes 1024",
    ]
    assert all(r[1] == () for r in routes if r[2]), "a route with a problem has no next hops"


@pytest.mark.netns
async def test_the_other_protocols_decoder_sees_only_that_protocols_routes(node: Node) -> None:
    route(node, "198.51.100.9/32", via(DEV_B, 4), "proto", str(OTHER_PROTO))
    route(node, "2001:db8:100::9/128", f"nexthop {via(DEV_A, 6)} nexthop {via(DEV_B, 6)}",
          "proto", str(OTHER_PROTO))

    for strict in (True, False):
        found = []
        for family in (socket.AF_INET, socket.AF_INET6):
            found += rtnl.RouteDecoder(family, OTHER_PROTO).decode(
                await node.dump(family, OTHER_PROTO, strict=strict))
        assert found == [
            (A("198.51.100.9"), ((GW4[DEV_B].packed, node.index[DEV_B]),), ""),
            (A("2001:db8:100::9"), ((GW6[DEV_A].packed, node.index[DEV_A]),
                                    (GW6[DEV_B].packed, node.index[DEV_B])), ""),
        ]


# -- remembering the last dump -----------------------------------------------------


@pytest.mark.netns
async def test_a_repeated_dump_gives_the_same_routes_as_the_same_objects(node: Node) -> None:
    decoders: dict[int, rtnl.RouteDecoder] = {}
    first = await decoded(node, decoders)
    again = await decoded(node, decoders)

    assert again == first == good_routes(node)
    assert all(a is b for a, b in zip(again, first, strict=True)), "remembered, not decoded again"


@pytest.mark.netns
async def test_a_route_that_changed_between_dumps_is_decoded_anew(node: Node) -> None:
    decoders: dict[int, rtnl.RouteDecoder] = {}
    first = await decoded(node, decoders)
    moved = A("2001:db8:100::2")
    node.ip("-6", "route", "replace", f"{moved}/128", *via(DEV_B, 6).split(), "proto", str(PROTO))
    node.ip("route", "del", "198.51.100.1/32", "proto", str(PROTO))
    node.ip("route", "add", "198.51.100.8/32", *via(DEV_A, 4).split(), "proto", str(PROTO))

    again = await decoded(node, decoders)

    expected = {r[0]: r for r in first}
    del expected[A("198.51.100.1")]
    expected[moved] = (moved, ((GW6[DEV_B].packed, node.index[DEV_B]),), "")
    expected[A("198.51.100.8")] = (A("198.51.100.8"), ((GW4[DEV_A].packed, node.index[DEV_A]),), "")
    assert sorted(again, key=lambda r: (r[0].version, r[0])) == sorted(
        expected.values(), key=lambda r: (r[0].version, r[0]))
    assert next(r for r in again if r[0] == A("198.51.100.2")) is first[1], "the unchanged are remembered"
    # A new route to the same next hops as a known one takes that one's: by its shape.
    new = next(r for r in again if r[0] == A("198.51.100.8"))
    assert new[1] is first[0][1]


def test_routes_of_one_shape_share_their_next_hops_and_differ_in_destination() -> None:
    hops = [(A("192.0.2.2").packed, 7), (A("192.0.2.130").packed, 8)]
    messages = [(rtnl.RTM_NEWROUTE, rtnl.route_request(A(f"198.51.100.{n}").packed, PROTO, hops))
                for n in range(1, 4)]

    routes = rtnl.RouteDecoder(socket.AF_INET, PROTO).decode(messages)

    assert [r[0] for r in routes] == [A("198.51.100.1"), A("198.51.100.2"), A("198.51.100.3")]
    assert routes[0][1] == tuple(hops) and routes[0][1] is routes[1][1] is routes[2][1]


def test_messages_a_dump_does_not_hold_routes_in_are_skipped() -> None:
    good = rtnl.route_request(A("198.51.100.1").packed, PROTO, [(A("192.0.2.2").packed, 7)])
    cloned = bytearray(good)
    cloned[8:12] = rtnl.U32.pack(rtnl.RTM_F_CLONED)  # rtm_flags: a cached exception route
    other_family = rtnl.route_request(A("2001:db8:100::1").packed, PROTO, [(A("2001:db8:a::2").packed, 7)])
    messages: list[tuple[int, bytes | bytearray]] = [
        (rtnl.RTM_NEWLINK, good), (rtnl.RTM_NEWROUTE, cloned), (rtnl.RTM_NEWROUTE, other_family),
        (rtnl.RTM_NEWROUTE, good[:8]), (rtnl.RTM_NEWROUTE, good)]

    decoder = rtnl.RouteDecoder(socket.AF_INET, PROTO)
    for _ in range(2):  # decoded, then remembered
        assert decoder.decode(messages) == [(A("198.51.100.1"), ((A("192.0.2.2").packed, 7),), "")]


# -- naming the next hops ----------------------------------------------------------


@pytest.mark.netns
async def test_named_next_hops_make_flocks_route_table(node: Node) -> None:
    names = {index: name for name, index in node.index.items()}
    table, problems = rtnl.NexthopNames().table(await decoded(node), names.get)

    gateways = {4: GW4, 6: GW6}
    assert table == {address: sorted_nexthops(Nexthop(gateways[address.version][dev], dev) for dev in devs)
                     for address, devs in GOOD.items()}
    assert problems == set()


def test_a_table_repeated_with_the_same_link_names_reuses_its_next_hops() -> None:
    gateway_a, gateway_b = A("2001:db8:a::2"), A("2001:db8:b::2")
    hops = ((gateway_b.packed, 8), (gateway_a.packed, 7))
    routes = [(A("2001:db8:100::1"), hops, ""), (A("2001:db8:100::2"), hops, "")]
    names = NexthopNamesFixture({7: DEV_A, 8: DEV_B})
    namer = rtnl.NexthopNames()

    first, _ = namer.table(routes, names.get)
    again, _ = namer.table(routes, names.get)
    names.links[8] = "flock0000000c"  # the same ifindex, another name
    renamed, _ = namer.table(routes, names.get)

    both = (Nexthop(gateway_a, DEV_A), Nexthop(gateway_b, DEV_B))
    assert first == again == {A("2001:db8:100::1"): both, A("2001:db8:100::2"): both}
    assert again[A("2001:db8:100::1")] is first[A("2001:db8:100::1")] is first[A("2001:db8:100::2")]
    assert names.asked == [8, 7, 8, 7, 8, 7], "each next-hop set named once per table"
    assert renamed[A("2001:db8:100::1")] == (Nexthop(gateway_a, DEV_A), Nexthop(gateway_b, "flock0000000c"))


def test_next_hops_of_one_address_in_several_routes_are_merged() -> None:
    # Kernels before 4.11 dumped each IPv6 multipath sibling as a route of its own.
    gateway_a, gateway_b = A("2001:db8::12"), A("2001:db8::11")
    any6 = A("2001:db8:100::10")
    routes = [(any6, ((gateway_a.packed, 7),), ""), (any6, ((gateway_b.packed, 8),), "")]

    table, problems = rtnl.NexthopNames().table(routes, {7: "flock0000000b", 8: "flock0000000a"}.get)

    assert table == {any6: (Nexthop(gateway_b, "flock0000000a"), Nexthop(gateway_a, "flock0000000b"))}
    assert problems == set()


def test_a_next_hop_on_a_link_that_is_gone_keeps_its_route_out_with_the_reason() -> None:
    gateway = A("192.0.2.2").packed
    routes = [(A("198.51.100.1"), ((gateway, 7),), ""), (A("198.51.100.2"), ((gateway, 9),), ""),
              (A("198.51.100.0"), (), "198.51.100.0/24: not a host route")]

    table, problems = rtnl.NexthopNames().table(routes, {7: DEV_A}.get)

    assert table == {A("198.51.100.1"): (Nexthop(A("192.0.2.2"), DEV_A),)}
    assert problems == {"198.51.100.2/32: no link with index 9", "198.51.100.0/24: not a host route"}


@dataclasses.dataclass
class NexthopNamesFixture:
    """ifindex -> name, recording what was asked."""

    links: dict[int, str]
    asked: list[int] = dataclasses.field(default_factory=list)

    def get(self, index: int) -> str | None:
        self.asked.append(index)
        return self.links.get(index)
