"""Reading a node's flock routes the way an operator would: ``ip -j route``.

    next_hops(node, "198.51.100.10/32")   # [("203.0.113.11", "flock0a1b2c3d"), ...], [] if none
    next_hops(node, "198.51.100.10/32", WITHDRAWN)  # the same of a withdrawn route (protocol 202)
    flock_prefixes(node)                  # {"198.51.100.10/32", "2001:db8:100::10/128"}
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.birdlab import kernel_prefixes
from tests.support.netns import sh

PROTO = 201  # the agent's default routeProtocol: advertised routes
WITHDRAWN = 202  # its default withdrawnRouteProtocol: withdrawn routes that still forward
LAST_RESORT = 203  # its default lastResortRouteProtocol: routes to last-resort pods


def flock_routes(netns: str, prefix: str, protocol: int = PROTO) -> list[dict[str, Any]]:
    """``ip -j route show PREFIX proto 201`` in ``netns``, parsed."""
    family = "-6" if ":" in prefix else "-4"
    return list(json.loads(sh("ip", "-n", netns, family, "-j", "route", "show", prefix, "proto", str(protocol))
                           or "[]"))


def next_hops(netns: str, prefix: str, protocol: int = PROTO) -> list[tuple[str, str]]:
    """Sorted (via, dev) of flock's route to ``prefix`` in ``netns``: [] when there is none."""
    shown = flock_routes(netns, prefix, protocol)
    if not shown:
        return []
    (route,) = shown
    if "nexthops" in route:
        return sorted((str(h["gateway"]), str(h["dev"])) for h in route["nexthops"])
    return [(str(route["gateway"]), str(route["dev"]))]


def flock_prefixes(netns: str, protocol: int = PROTO) -> set[str]:
    """Every prefix flock routes in ``netns`` (with ``protocol``), both families."""
    return kernel_prefixes(netns, proto=str(protocol))
