"""How fast can flock read its routes back? NetlinkRoutes.dump() beside two references.

Builds a throw-away namespace ``flk-bench-<pid>-<hex>`` holding ~5,000 flock host routes
(all of 198.51.100.0/24 and 203.0.113.0/24, the rest IPv6 in 2001:db8:100::/64, every
third one multipath over two veths) plus 5,000 IPv6 routes of another protocol that a
dump must skip, then times, best of N:

  * NetlinkRoutes.dump()                       (what the agent uses)
  * ``ip -j route show table main proto N``    (-4 and -6, parsed into the same dict)
  * pyroute2 ``IPRoute.route('dump', proto=N)`` (both families, into the same dict)

and checks that all three return the same table. Needs root; touches nothing outside
its own namespace, which it deletes at the end, also on failure.

    .venv/bin/python bench/route_dump.py [--routes 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyroute2 import IPRoute

from flock.adapters.netlink import NetlinkRoutes
from flock.core.model import IPAddress, Nexthop, Nexthops, sorted_nexthops

PROTO = 250
DEVS = ("flock0000aaaa", "flock0000bbbb")
V6_BASE = int(ipaddress.IPv6Address("2001:db8:100::"))
NOISE_BASE = int(ipaddress.IPv6Address("2001:db8:200::"))


def ip(*args: str, netns: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout


def build(netns: str, routes: int) -> None:
    subprocess.run(["ip", "netns", "add", netns], check=True)
    ip("link", "set", "lo", "up", netns=netns)
    for n, dev in enumerate(DEVS):
        ip("link", "add", dev, "type", "veth", "peer", "name", f"peer{n}", netns=netns)
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                        f"net.ipv6.conf.{dev}.accept_dad=0"], check=True)
        ip("link", "set", dev, "up", netns=netns)
        ip("link", "set", f"peer{n}", "up", netns=netns)
    ip("addr", "add", "192.0.2.1/25", "dev", DEVS[0], netns=netns)
    ip("addr", "add", "192.0.2.129/25", "dev", DEVS[1], netns=netns)
    ip("addr", "add", "2001:db8:a::1/64", "dev", DEVS[0], "nodad", netns=netns)
    ip("addr", "add", "2001:db8:b::1/64", "dev", DEVS[1], "nodad", netns=netns)
    lines = []
    v4 = [f"{net}.{i}" for net in ("198.51.100", "203.0.113") for i in range(1, 255)]
    for n in range(routes):
        if n < len(v4):
            dst, one = f"{v4[n]}/32", f"via 192.0.2.{n % 100 + 2} dev {DEVS[0]}"
            two = f"via 192.0.2.{n % 100 + 130} dev {DEVS[1]}"
        else:
            dst = f"{ipaddress.IPv6Address(V6_BASE + n)}/128"
            one = f"via 2001:db8:a::{n % 100 + 2:x} dev {DEVS[0]}"
            two = f"via 2001:db8:b::{n % 100 + 2:x} dev {DEVS[1]}"
        hops = f"nexthop {one} nexthop {two}" if n % 3 == 0 else one
        lines.append(f"route replace {dst} proto {PROTO} {hops}")
    for n in range(routes):
        noise = ipaddress.IPv6Address(NOISE_BASE + n)
        lines.append(f"route replace {noise}/128 proto static via 2001:db8:a::9 dev {DEVS[0]}")
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        ip("-batch", batch.name, netns=netns)


def ip_json_only(netns: str) -> int:
    return sum(len(json.loads(ip(family, "-j", "route", "show", "table", "main", "proto",
                                 str(PROTO), netns=netns)))
               for family in ("-4", "-6"))


def table_from_ip_json(netns: str) -> dict[IPAddress, Nexthops]:
    table: dict[IPAddress, Nexthops] = {}
    for family in ("-4", "-6"):
        out = ip(family, "-j", "route", "show", "table", "main", "proto", str(PROTO),
                 netns=netns)
        for route in json.loads(out):
            hops = route.get("nexthops") or [route]
            table[ipaddress.ip_address(route["dst"])] = sorted_nexthops(
                Nexthop(ipaddress.ip_address(h["gateway"]), h["dev"]) for h in hops)
    return table


def table_from_pyroute2(ipr: Any) -> dict[IPAddress, Nexthops]:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    table: dict[IPAddress, Nexthops] = {}
    for family in (2, 10):
        for msg in ipr.route("dump", family=family, proto=PROTO, table=254):
            multipath = msg.get_attr("RTA_MULTIPATH")
            hops = ([(h.get_attr("RTA_GATEWAY"), h["oif"]) for h in multipath] if multipath
                    else [(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"))])
            table[ipaddress.ip_address(msg.get_attr("RTA_DST"))] = sorted_nexthops(
                Nexthop(ipaddress.ip_address(gw), names[oif]) for gw, oif in hops)
    return table


async def best_of(rounds: int, func: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        await func()
        best = min(best, time.perf_counter() - start)
    return best * 1000


async def run(netns: str, rounds: int) -> None:
    routes = NetlinkRoutes(protocol=PROTO, netns=netns)
    await routes.start()
    loop = asyncio.get_running_loop()
    try:
        ours = await routes.dump()
        ref = await loop.run_in_executor(None, table_from_ip_json, netns)

        def pyroute2_dump() -> dict[IPAddress, Nexthops]:
            ipr = IPRoute(netns=netns, flags=0)
            try:
                return table_from_pyroute2(ipr)
            finally:
                ipr.close()

        slow = await loop.run_in_executor(None, pyroute2_dump)
        assert ours == ref == slow, "the three dumps disagree"
        multipath = sum(len(hops) > 1 for hops in ours.values())
        print(f"{len(ours)} flock routes ({multipath} multipath) beside "
              f"{len(ours)} IPv6 routes of another protocol; best of {rounds}:")
        t_ours = await best_of(rounds, routes.dump)
        t_ip = await best_of(rounds, lambda: loop.run_in_executor(None, table_from_ip_json,
                                                                   netns))
        t_json = await best_of(rounds, lambda: loop.run_in_executor(None, ip_json_only, netns))
        t_pyroute2 = await best_of(min(rounds, 3), lambda: loop.run_in_executor(
            None, pyroute2_dump))
        print(f"  NetlinkRoutes.dump()                             {t_ours:8.1f} ms")
        print(f"  ip -j route show proto {PROTO} (-4, -6), same dict {t_ip:8.1f} ms  (reference)")
        print(f"  ip -j route show proto {PROTO} (-4, -6), json only {t_json:8.1f} ms")
        print(f"  pyroute2 route('dump', proto={PROTO}), same dict   {t_pyroute2:8.1f} ms")
    finally:
        await routes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Our pid in the name: a concurrent test session clears only flk-* namespaces
    # whose creator is gone (tests/support/netns.py).
    netns = f"flk-bench-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        build(netns, args.routes)
        try:
            import uvloop  # the agent's loop

            uvloop.run(run(netns, args.rounds))
        except ImportError:
            asyncio.run(run(netns, args.rounds))
    finally:
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)


if __name__ == "__main__":
    main()
