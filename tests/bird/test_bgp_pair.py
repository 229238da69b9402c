"""A node BIRD rendered by flock, in eBGP with a ToR BIRD: what reaches the fabric.

node (flk-node-*, AS 65101)  fl0  <->  fl0  ToR (flk-tor-*, AS 65000)
    192.0.2.2, 2001:db8:ffff::2             192.0.2.1, 2001:db8:ffff::1

One IPv4 and one IPv6 session. The ToR writes what it learns to its kernel table
(``proto bird``); that table is what the tests look at.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator, Sequence
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


def node_view(config: AgentConfig, anycast: Sequence[str]) -> BirdView:
    return bird_view(config=config, anycast=[ipaddress.ip_address(a) for a in anycast],
                     pod_cidrs=[ipaddress.ip_network(c) for c in POD_CIDRS])


@dataclasses.dataclass
class Pair:
    node: str
    tor: str
    config: AgentConfig
    node_bird: birdlab.RunningBird
    tor_bird: birdlab.RunningBird
    control: BirdControl

    def view(self, anycast: Sequence[str]) -> BirdView:
        return node_view(self.config, anycast)

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


def start_pair(make_netns: Any, birds: birdlab.Birds, anycast: Sequence[str]) -> Pair:
    """ToR and node namespaces, linked; both BIRDs running, the node's from flock's template."""
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
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
    node_bird = birds.start(node, render_bird_conf(node_view(config, anycast)))
    control = BirdControl(config_path=node_bird.config_path, socket=node_bird.socket, timeout=10)
    return Pair(node, tor, config, node_bird, tor_bird, control)


async def test_active_anycast_reaches_the_tor_and_leaves_it_when_withdrawn(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds, anycast=["198.51.100.10", "2001:db8:100::10"])

    birdlab.wait_for(lambda: set(ANYCAST + POD_CIDRS) <= pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST + POD_CIDRS} in the ToR's kernel table\n"
                          f"{pair.tor_bird.birdc('show', 'protocols', 'all')}")
    v6_route = sh("ip", "-6", "route", "show", "2001:db8:100::10/128", netns=pair.tor)
    assert "via 2001:db8:ffff::2" in v6_route or "via fe80::" in v6_route

    # A running BIRD is adopted: the same rendering changes nothing.
    assert await pair.control.apply(render_bird_conf(pair.view(
        ["198.51.100.10", "2001:db8:100::10"]))) is False

    assert await pair.control.apply(render_bird_conf(pair.view([]))) is True
    birdlab.wait_for(lambda: not set(ANYCAST) & pair.tor_routes(), timeout=CONVERGE,
                     what=f"{ANYCAST} to leave the ToR's kernel table")
    assert set(POD_CIDRS) <= pair.tor_routes()  # pod CIDRs stay advertised


async def test_a_prefix_outside_the_pools_never_reaches_the_tor(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds, anycast=[])
    # Planted in the node's kernel with flock's own protocol number: BIRD has no kernel
    # protocol, so it never even sees it.
    sh("ip", "route", "add", "blackhole", OUTSIDE, "proto", "201", netns=pair.node)
    birdlab.wait_for(lambda: set(POD_CIDRS) <= pair.tor_routes(), timeout=CONVERGE,
                     what=f"{POD_CIDRS} in the ToR's kernel table (sessions up)")

    # Asked for as anycast: the view drops it, the config never names it.
    view = pair.view(["198.51.100.10", "203.0.113.99"])
    assert view.anycast_v4 == ("198.51.100.10/32",)
    text = render_bird_conf(view)
    assert "203.0.113.99" not in text
    assert await pair.control.apply(text) is True
    birdlab.wait_for(lambda: "198.51.100.10/32" in pair.tor_routes(), timeout=CONVERGE,
                     what="198.51.100.10/32 in the ToR's kernel table")
    assert OUTSIDE not in pair.tor_routes()

    # Even a config that originates it and lists it as active (a bug past the view) does
    # not export it: the filter also checks the pools. Nor a pool prefix that is not in
    # the active set. 198.51.100.11 is the positive control for this config version.
    tampered = render_bird_conf(pair.view(["198.51.100.10", "198.51.100.11"]))
    originate = "\troute 203.0.113.0/26 blackhole;\t# pod CIDR\n"
    active_set = "\t198.51.100.11/32\n];"
    assert originate in tampered and active_set in tampered
    tampered = tampered.replace(originate, originate + "\troute 203.0.113.99/32 blackhole;\n"
                                                       "\troute 198.51.100.99/32 blackhole;\n")
    tampered = tampered.replace(active_set, "\t198.51.100.11/32,\n\t203.0.113.99/32\n];")
    assert await pair.control.apply(tampered) is True
    birdlab.wait_for(lambda: "198.51.100.11/32" in pair.tor_routes(), timeout=CONVERGE,
                     what="198.51.100.11/32 in the ToR's kernel table")
    originated = pair.node_bird.birdc("show", "route", "protocol", "flock_originate_v4")
    assert "203.0.113.99/32" in originated and "198.51.100.99/32" in originated
    assert "203.0.113.99/32" not in pair.exported()
    assert "198.51.100.99/32" not in pair.exported()
    assert not {OUTSIDE, "198.51.100.99/32"} & pair.tor_routes()
