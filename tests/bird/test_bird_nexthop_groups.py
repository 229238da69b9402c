"""BIRD learns and withdraws flock's routes through resilient next-hop groups.

The pair of tests/bird/test_bgp_pair.py (a node BIRD rendered by flock in eBGP with a ToR
BIRD), with the routes written by NetlinkRoutes in ``resilient`` mode: ``nhid`` routes,
whose next hops the kernel dumps expanded. A group changed in place is announced by the
kernel with its new next hops, and BIRD follows; a re-tag withdraws; a delete withdraws.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flock.adapters.netlink import NetlinkRoutes
from flock.core.model import Nexthop, sorted_nexthops
from flock.core.routediff import DeleteRoute, ReplaceRoute, WithdrawRoute
from tests.bird.test_bgp_pair import ANYCAST, CONVERGE, POD_CIDRS, birds, start_pair
from tests.support import birdlab
from tests.support.netns import sh

pytestmark = [pytest.mark.bird, pytest.mark.slow, pytest.mark.netns]

__all__ = ["birds"]  # the fixture, imported for this module's tests

A = ipaddress.ip_address
V4, V6 = A("198.51.100.10"), A("2001:db8:100::10")
HOPS = {4: sorted_nexthops([Nexthop(A("203.0.113.11"), "pods"), Nexthop(A("203.0.113.12"), "pods")]),
        6: sorted_nexthops([Nexthop(A("2001:db8:200::11"), "pods"), Nexthop(A("2001:db8:200::12"), "pods")])}


async def test_bird_learns_follows_and_withdraws_routes_through_resilient_groups(
        make_netns: Any, birds: birdlab.Birds) -> None:
    pair = start_pair(make_netns, birds)
    sh("ip", "link", "set", "lo", "up", netns=pair.node)
    routes = NetlinkRoutes(protocol=201, withdrawn_protocol=202, last_resort_protocol=203, netns=pair.node,
                           timeout=30, nexthop_groups="resilient")
    await routes.start()
    try:
        assert routes.mode == "resilient", routes.fallback
        assert await routes.apply([ReplaceRoute(V4, HOPS[4], new=True), ReplaceRoute(V6, HOPS[6], new=True)]) == []
        assert "nhid" in pair.node_route(ANYCAST[0]) and "nhid" in pair.node_route(ANYCAST[1])
        birdlab.wait_for(lambda: set(ANYCAST + POD_CIDRS) <= pair.tor_routes(), timeout=CONVERGE,
                         what=f"{ANYCAST} in the ToR's kernel table\n{pair.tor_bird.birdc('show', 'protocols')}")

        def learned_hops() -> int:
            shown = pair.node_bird.birdc("show", "route", "for", ANYCAST[0], "protocol", "flock_kernel_v4", "all")
            return shown.count("via 203.0.113.1")

        birdlab.wait_for(lambda: learned_hops() == 2, timeout=CONVERGE, what="both next hops learned")
        assert await routes.apply([ReplaceRoute(V4, HOPS[4][1:])]) == []  # the group, in place
        birdlab.wait_for(lambda: learned_hops() == 1, timeout=CONVERGE, what="BIRD to follow the group's change")
        assert ANYCAST[0] in pair.tor_routes()

        assert await routes.apply([WithdrawRoute(V4, HOPS[4][1:]), WithdrawRoute(V6, HOPS[6])]) == []
        birdlab.wait_for(lambda: not set(ANYCAST) & pair.tor_routes(), timeout=CONVERGE,
                         what=f"{ANYCAST} to leave the ToR's kernel table")
        assert "nhid" in pair.node_route(ANYCAST[0]), "still forwarding through the group"

        assert await routes.apply([ReplaceRoute(V4, HOPS[4], last_resort=True)]) == []
        birdlab.wait_for(lambda: ANYCAST[0] in pair.tor_routes(), timeout=CONVERGE,
                         what=f"{ANYCAST[0]} back, as a last resort")
        assert "65101 65101 65101 65101" in pair.tor_bird.birdc("show", "route", "for", ANYCAST[0], "all")

        assert await routes.apply([DeleteRoute(V4, last_resort=True), DeleteRoute(V6, withdrawn=True)]) == []
        birdlab.wait_for(lambda: ANYCAST[0] not in pair.tor_routes(), timeout=CONVERGE,
                         what=f"{ANYCAST[0]} to leave the ToR's kernel table")
        assert sh("ip", "nexthop", "show", netns=pair.node) == ""
    finally:
        await routes.close()
