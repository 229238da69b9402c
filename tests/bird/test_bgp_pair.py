"""A node BIRD rendered by flock, in eBGP with a ToR BIRD: what reaches the fabric.

node (flk-node-*, AS 65101)  fl0  <->  fl0  ToR (flk-tor-*, AS 65000)
    192.0.2.2, 2001:db8:ffff::2             192.0.2.1, 2001:db8:ffff::1
    pods: veth "pods", 203.0.113.1/26 and 2001:db8:200::1/64 (next hops .11, .12, ::11, ::12)

One IPv4 and one IPv6 session. The node's BIRD learns flock's anycast routes from the
node's kernel (rtm_protocol 201), which the tests write with ``ip route`` as flock would.
The ToR writes what it learns to its kernel table (``proto bird``); that table is what
the tests look at.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import pytest

from flock.adapters.bird import BirdControl, render_bird_conf
from flock.core.birdview import BirdView, bird_view
from flock.core.settings import AgentConfig, parse_config
from tests.support import birdlab
from tests.support.netns import sh

pytestmark = [pytest.mark.bird, pytest.mark.slow]

ANYCAST = ["198.51.100.10/32", "2001:db8:100::10/128"]
POD_CIDRS = ["203.0.113.0/26", "2001:db8:200::/64"]
OUTSIDE = "203.0.113.99/32"
CONVERGE = 60  # seconds; BGP sessions come up in ~5-10 s, routes follow in milliseconds


def node_view(config: AgentConfig) -> BirdView:
    return bird_view(config=config, pod_cidrs=[ipaddress.ip_network(c) for c in POD_CIDRS])


@dataclasses.dataclass
class Pair:
    node: str
    tor: str
    config: AgentConfig
    node_bird: birdlab.RunningBird
    tor_bird: birdlab.RunningBird
    control: BirdControl

    def view(self) -> BirdView:
        return node_view(self.config)

    def route(self, verb: str, prefix: str, *extra: str) -> None:
        """``ip route <verb> <prefix> <extra>`` in the node, as flock writes its routes."""
        family = "-6" if ":" in prefix else "-4"
        sh("ip", family, "route", verb, prefix, *extra, netns=self.node)

    def node_route(self, prefix: str) -> str:
        return sh("ip", "-6" if ":" in prefix else "-4", "route", "show", prefix, netns=self.node)

    def tor_routes(self) -> set[str]:
        return birdlab.kernel_prefixes(self.tor, proto="bird")

    def exported(self) -> str:
        """What the node's BIRD sends to the ToR, both sessions."""
        return (self.node_bird.birdc("show", "route", "export", "flock_peer_192_0_2_1")
                + self.node_bird.birdc("show", "route", "export", "flock_peer_2001_db8_ffff__1"))


@pytest.fixture
def birds() -> Iterator[birdlab.Birds]:
    with birdlab.Birds() as started:
        yield started


def start_pair(make_netns: Any, birds: birdlab.Birds) -> Pair:
    """ToR and node namespaces, linked; both BIRDs running, the node's from flock's template."""
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    sh("ip", "link", "add", "pods", "type", "veth", "peer", "name", "pods-peer", netns=node)  # no dummy module
    sh("ip", "link", "set", "pods-peer", "up", netns=node)
    sh("ip", "addr", "add", "203.0.113.1/26", "dev", "pods", netns=node)
    sh("ip", "addr", "add", "2001:db8:200::1/64", "dev", "pods", "nodad", netns=node)
    sh("ip", "link", "set", "pods", "up", netns=node)
    config = parse_config({
        "nodeName": "node-a",
        "anycastPools": [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
        "bird": {
            "routerId": str(wire.b_v4.ip), "asn": 65101,
            "peers": [{"address": str(wire.a_v4.ip), "asn": 65000},
                      {"address": str(wire.a_v6.ip), "asn": 65000}],
        },
    }, environ={})
    tor_bird = birds.start(tor, birdlab.tor_config(
        router_id=wire.a_v4.ip, asn=65000,
        neighbors=[(wire.b_v4.ip, 65101), (wire.b_v6.ip, 65101)]))
    node_bird = birds.start(node, render_bird_conf(node_view(config)))
    control = BirdControl(config_path=node_bird.config_path, socket=node_bird.socket, timeout=10)
    return Pair(node, tor, config, node_bird, tor_bird, control)


TWO_HOPS_V4 = ("nexthop", "via", "203.0.113.11", "dev", "pods", "nexthop", "via", "203.0.113.12", "dev", "pods")
TWO_HOPS_V6 = ("nexthop", "via", "2001:db8:200::11", "dev", "pods", "nexthop", "via", "2001:db8:200::12", "dev", "pods")


async def test_a_route_of_flocks_protocol_is_advertised_and_re_tagging_it_withdraws_it(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds)
    pair.route("add", ANYCAST[0], "proto", "201", *TWO_HOPS_V4)
    pair.route("add", ANYCAST[1], "proto", "201", "via", "2001:db8:200::11", "dev", "pods")

    birdlab.wait_for(lambda: set(ANYCAST + POD_CIDRS) <= pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST + POD_CIDRS} in the ToR's kernel table\n"
                          f"{pair.tor_bird.birdc('show', 'protocols', 'all')}")
    v6_route = sh("ip", "-6", "route", "show", "2001:db8:100::10/128", netns=pair.tor)
    assert "via 2001:db8:ffff::2" in v6_route or "via fe80::" in v6_route

    # A running BIRD is adopted: the same rendering changes nothing.
    assert await pair.control.apply(render_bird_conf(pair.view())) is False

    # The IPv6 route gains a next hop: still advertised, nothing to reload.
    pair.route("replace", ANYCAST[1], "proto", "201", *TWO_HOPS_V6)

    # Re-tagged as withdrawn: gone from the fabric, still forwarding on the node.
    for prefix, hops in zip(ANYCAST, (TWO_HOPS_V4, TWO_HOPS_V6), strict=True):
        pair.route("replace", prefix, "proto", "202", *hops)
    birdlab.wait_for(lambda: not set(ANYCAST) & pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST} to leave the ToR's kernel table")
    for prefix in ANYCAST:
        assert "proto 202" in pair.node_route(prefix) and "nexthop via" in pair.node_route(prefix)
    assert set(POD_CIDRS) <= pair.tor_routes()  # pod CIDRs stay advertised

    # Re-tagged back: advertised again; deleted: withdrawn.
    pair.route("replace", ANYCAST[0], "proto", "201", *TWO_HOPS_V4)
    birdlab.wait_for(lambda: ANYCAST[0] in pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST[0]} back in the ToR's kernel table")
    pair.route("del", ANYCAST[0], "proto", "201")
    birdlab.wait_for(lambda: ANYCAST[0] not in pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST[0]} to leave the ToR's kernel table")


async def test_only_flocks_host_routes_inside_the_pools_reach_the_tor(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds)
    hop = ("via", "203.0.113.11", "dev", "pods")
    pair.route("add", OUTSIDE, "proto", "201", *hop)  # flock's protocol, outside every pool
    pair.route("add", "198.51.100.128/25", "proto", "201", *hop)  # in a pool, not a host route
    pair.route("add", "198.51.100.20/32", "proto", "99", *hop)  # in a pool, another program's
    pair.route("add", "198.51.100.21/32", "proto", "202", *hop)  # flock's withdrawn route
    pair.route("add", "198.51.100.10/32", "proto", "201", *hop)  # the positive control
    birdlab.wait_for(lambda: {"198.51.100.10/32", *POD_CIDRS} <= pair.tor_routes(), timeout=CONVERGE,
                     what="198.51.100.10/32 and the pod CIDRs in the ToR's kernel table")
    learned = pair.node_bird.birdc("show", "route", "protocol", "flock_kernel_v4")
    assert "198.51.100.10/32" in learned
    for refused in (OUTSIDE, "198.51.100.128/25", "198.51.100.20/32", "198.51.100.21/32"):
        assert refused not in learned
        assert refused not in pair.tor_routes()

    # Even a config whose learning filter takes every kernel route (a bug, or an
    # operator's template) does not export them: the export filter checks again.
    text = render_bird_conf(pair.view())
    learn_all = text.replace("if krt_source != 201 && krt_source != 203 then reject;", "accept;")
    assert learn_all != text
    assert await pair.control.apply(learn_all) is True
    birdlab.wait_for(lambda: OUTSIDE in pair.node_bird.birdc("show", "route", "protocol", "flock_kernel_v4"),
                     timeout=CONVERGE, what=f"{OUTSIDE} learned by the tampered config")
    pair.route("add", "198.51.100.11/32", "proto", "201", *hop)  # the positive control for this version
    birdlab.wait_for(lambda: "198.51.100.11/32" in pair.tor_routes(), timeout=CONVERGE,
                     what="198.51.100.11/32 in the ToR's kernel table")
    for refused in (OUTSIDE, "198.51.100.128/25"):
        assert refused not in pair.exported()
        assert refused not in pair.tor_routes()


async def test_a_last_resort_route_is_advertised_with_the_as_path_prepended(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds)
    pair.route("add", ANYCAST[0], "proto", "203", *TWO_HOPS_V4)  # last-resort pods only
    pair.route("add", "198.51.100.11/32", "proto", "201", *TWO_HOPS_V4)  # eligible pods
    birdlab.wait_for(lambda: {ANYCAST[0], "198.51.100.11/32"} <= pair.tor_routes(), timeout=CONVERGE,
                     what="both prefixes in the ToR's kernel table")

    def as_path(prefix: str) -> list[str]:
        shown = pair.tor_bird.birdc("show", "route", "for", prefix, "all")
        found = re.search(r"BGP\.as_path: ([\d ]+)", shown)
        assert found, shown
        return found.group(1).split()

    assert as_path(ANYCAST[0]) == ["65101"] * 4, "prepended 3 times (the default) besides the node's own"
    assert as_path("198.51.100.11/32") == ["65101"]

    pair.route("replace", ANYCAST[0], "proto", "201", *TWO_HOPS_V4)  # an eligible pod again
    birdlab.wait_for(lambda: as_path(ANYCAST[0]) == ["65101"], timeout=CONVERGE, what="the plain AS path back")
