"""How fast can flock read its routes back? The route dump beside ``ip -j route show``.

Builds a throw-away namespace ``flk-bench-<pid>-<hex>`` holding N flock host routes (all
of 198.51.100.0/24 and 203.0.113.0/24 first, the rest IPv6 in 2001:db8:100::/64, every
third one multipath over two veths, ~100 distinct next hops per veth) plus N IPv6 routes
of another protocol that a dump must skip, then times, best of ``--rounds``, each beside
the reference measured in the same run, ``ip -j route show table main proto P`` (-4 and
-6; the process alone, as bench/passes.py measures it):

  * ``ip -j``, its JSON decoded, and into the table flock uses ({address: Nexthops})
  * the kernel's part: RtnlSocket.dump of both families, nothing decoded
  * RtnlSocket.dump + RouteDecoder + NexthopNames into the table (flock.adapters.rtnetlink):
    a first dump (decoders that have seen nothing), and a repeated one (the periodic
    drift-repair dump, when nothing changed)
  * NetlinkRoutes.dump(): what the agent calls (both of flock's protocols)
  * pyroute2 ``IPRoute.route('dump', proto=P)`` into the table

and checks that they all return the same table. Needs root; touches nothing outside its
own namespace, which it deletes at the end, also on failure.

    .venv/bin/python bench/route_dump.py [--routes 1000,10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute

from flock.adapters import rtnetlink as rtnl
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.netns import enter as enter_netns
from flock.adapters.netns import named as named_netns
from flock.core.model import IPAddress, Nexthop, Nexthops, sorted_nexthops

PROTO = 250
WITHDRAWN_PROTO = 251  # NetlinkRoutes dumps this one too; it holds no route here
LAST_RESORT_PROTO = 252  # and this one
DEVS = ("flock0000aaaa", "flock0000bbbb")
V6_BASE = int(ipaddress.IPv6Address("2001:db8:100::"))
NOISE_BASE = int(ipaddress.IPv6Address("2001:db8:200::"))
T = TypeVar("T")


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


def ip_json_raw(netns: str) -> list[str]:
    return [ip(family, "-j", "route", "show", "table", "main", "proto", str(PROTO), netns=netns)
            for family in ("-4", "-6")]


def ip_json_decoded(netns: str) -> int:
    return sum(len(json.loads(out)) for out in ip_json_raw(netns))


def table_from_ip_json(netns: str) -> dict[IPAddress, Nexthops]:
    table: dict[IPAddress, Nexthops] = {}
    for out in ip_json_raw(netns):
        for route in json.loads(out):
            hops = route.get("nexthops") or [route]
            table[ipaddress.ip_address(route["dst"])] = sorted_nexthops(
                Nexthop(ipaddress.ip_address(h["gateway"]), h["dev"]) for h in hops)
    return table


def table_from_pyroute2(netns: str) -> dict[IPAddress, Nexthops]:
    ipr = IPRoute(netns=netns, flags=0)
    try:
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
    finally:
        ipr.close()


class Reader:
    """flock.adapters.rtnetlink's route reading, as the netlink adapter uses it: one socket,
    one RouteDecoder per family and one NexthopNames. Runs inside the namespace (on the
    thread that makes it)."""

    def __init__(self) -> None:
        self.sock = rtnl.RtnlSocket(timeout=30, strict=True)
        self.decoders = {family: rtnl.RouteDecoder(family, PROTO) for family in (socket.AF_INET, socket.AF_INET6)}
        self.names = rtnl.NexthopNames()
        links: dict[int, str] = {}
        request = rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for kind, msg in self.sock.dump(rtnl.RTM_GETLINK, request):
            index, name = rtnl.link(msg, 0, len(msg))
            if kind == rtnl.RTM_NEWLINK and name is not None:
                links[index] = name
        self.links = links

    def kernel(self, family: int) -> list[tuple[int, bytearray]]:
        return self.sock.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(family, 0, 0, 0, rtnl.RT_TABLE_MAIN, PROTO, 0, 0, 0))

    def kernel_only(self) -> int:
        return len(self.kernel(socket.AF_INET)) + len(self.kernel(socket.AF_INET6))

    def table(self) -> dict[IPAddress, Nexthops]:
        routes = (self.decoders[socket.AF_INET].decode(self.kernel(socket.AF_INET))
                  + self.decoders[socket.AF_INET6].decode(self.kernel(socket.AF_INET6)))
        table, problems = self.names.table(routes, self.links.get)
        assert not problems, problems
        return table

    def first_table(self) -> dict[IPAddress, Nexthops]:
        """A table from decoders that have seen no dump yet."""
        self.decoders = {family: rtnl.RouteDecoder(family, PROTO) for family in self.decoders}
        self.names = rtnl.NexthopNames()
        return self.table()


def best_of(rounds: int, func: Callable[[], object]) -> float:
    """The fastest of ``rounds`` calls, in ms."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best * 1000


async def run(netns: str, size: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    inside = concurrent.futures.ThreadPoolExecutor(1, initializer=enter_netns, initargs=(named_netns(netns),))
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=WITHDRAWN_PROTO, last_resort_protocol=LAST_RESORT_PROTO,
                           netns=netns)
    await routes.start()

    async def there(func: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(inside, func, *args)

    try:
        reader = await there(Reader)
        ours = await there(reader.table)
        agents = (await routes.dump()).advertised
        ref = await asyncio.to_thread(table_from_ip_json, netns)
        slow = await asyncio.to_thread(table_from_pyroute2, netns)
        assert ours == agents == ref == slow, "the dumps disagree"

        figures: list[tuple[str, float]] = [
            ("ip -j route show (-4, -6), the process alone", await asyncio.to_thread(
                best_of, rounds, lambda: ip_json_raw(netns))),
            ("ip -j ..., its JSON decoded", await asyncio.to_thread(best_of, rounds, lambda: ip_json_decoded(netns))),
            ("ip -j ..., into {address: Nexthops}", await asyncio.to_thread(
                best_of, rounds, lambda: table_from_ip_json(netns))),
            ("kernel dump alone (RtnlSocket.dump)", await there(best_of, rounds, reader.kernel_only)),
            ("RouteDecoder + NexthopNames, first dump", await there(best_of, rounds, reader.first_table)),
            ("RouteDecoder + NexthopNames, repeated dump", await there(best_of, rounds, reader.table)),
        ]
        start = time.perf_counter()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            await routes.dump()
            best = min(best, time.perf_counter() - start)
        figures.append(("NetlinkRoutes.dump() (both protocols)", best * 1000))
        figures.append(("pyroute2 route('dump'), into the same", await asyncio.to_thread(
            best_of, min(rounds, 3), lambda: table_from_pyroute2(netns))))

        multipath = sum(len(hops) > 1 for hops in ours.values())
        print(f"\n{len(ours)} flock routes ({multipath} multipath) beside {size} IPv6 routes of another "
              f"protocol; proto {PROTO}; best of {rounds}:")
        reference = figures[0][1]
        for name, ms in figures:
            print(f"  {name:<46} {ms:9.2f} ms  {ms / reference:6.2f}x")
    finally:
        await routes.close()
        inside.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--routes", default="1000,10000", help="comma-separated sizes")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for size in (int(s) for s in args.routes.split(",")):
        # Our pid in the name: a concurrent test session clears only flk-* namespaces
        # whose creator is gone (tests/support/netns.py).
        netns = f"flk-bench-{os.getpid()}-{secrets.token_hex(2)}"
        try:
            build(netns, size)
            try:
                import uvloop  # the agent's loop

                uvloop.run(run(netns, size, args.rounds))
            except ImportError:
                asyncio.run(run(netns, size, args.rounds))
        finally:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)


if __name__ == "__main__":
    main()
