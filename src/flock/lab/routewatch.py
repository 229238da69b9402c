"""Watch a namespace's routes to some prefixes, with timestamps, as the kernel changes them.

A raw rtnetlink socket opened inside the namespace joins the IPv4 and IPv6 route groups;
a thread reads it, and for every change of a watched prefix records the time it was
announced (CLOCK_MONOTONIC) and the route's next hops right after (read with ``ip -j``).
This is how the lab measures withdrawal latency and counts route changes at the ToR.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable

from flock.netns import enter as enter_netns
from flock.netns import named as named_netns

_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_RTM_NEWROUTE, _RTM_DELROUTE = 24, 25
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_RTA_DST = 1


@dataclasses.dataclass(frozen=True)
class RouteChange:
    at: float  # time.monotonic() when the kernel announced it
    prefix: str
    nexthops: frozenset[str]  # "via X dev Y", empty when the route is gone


def nexthops(netns: str, prefix: str) -> frozenset[str]:
    family = "-6" if ":" in prefix else "-4"
    out = subprocess.run(["ip", "-n", netns, family, "-j", "route", "show", "exact", prefix],
                         capture_output=True, text=True, timeout=10).stdout
    hops: set[str] = set()
    for route in json.loads(out or "[]"):
        for hop in route.get("nexthops") or [route]:
            if "gateway" in hop:
                hops.add(f"via {hop['gateway']} dev {hop['dev']}")
    return frozenset(hops)


class RouteWatch:
    def __init__(self, netns: str, prefixes: Iterable[str]) -> None:
        self.netns = netns
        self.prefixes = {str(ipaddress.ip_network(p)) for p in prefixes}
        self.changes: list[RouteChange] = []
        self.current = {p: nexthops(netns, p) for p in self.prefixes}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = _socket_in(netns)
        self._thread = threading.Thread(target=self._run, name=f"routewatch-{netns}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def history(self, prefix: str) -> list[RouteChange]:
        with self._lock:
            return [c for c in self.changes if c.prefix == prefix]

    def first_change_after(self, prefix: str, since: float, gone: str) -> float | None:
        """When the next hop ``gone`` left ``prefix``'s route, first time after ``since``."""
        for change in self.history(prefix):
            if change.at >= since and gone not in change.nexthops:
                return change.at
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data = self._sock.recv(1 << 20)
            except OSError:
                continue
            now = time.monotonic()
            touched = {p for p in _prefixes(data) if p in self.prefixes}
            for prefix in sorted(touched):
                hops = nexthops(self.netns, prefix)
                with self._lock:
                    if hops != self.current.get(prefix):
                        self.current[prefix] = hops
                        self.changes.append(RouteChange(now, prefix, hops))


def _socket_in(netns: str) -> socket.socket:
    """A route-group netlink socket that belongs to ``netns`` (opened from a thread inside it)."""
    result: dict[str, socket.socket | BaseException] = {}

    def opener() -> None:
        try:
            enter_netns(named_netns(netns))
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 22)  # SO_RCVBUFFORCE: never drop a change
            sock.bind((0, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
            result["sock"] = sock
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=opener)  # ends right after: nothing stays in the netns
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


def _prefixes(data: bytes) -> list[str]:
    found = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind in (_RTM_NEWROUTE, _RTM_DELROUTE):
            body = offset + _NLMSGHDR.size
            family, dst_len = data[body], data[body + 1]
            attr = body + _RTMSG.size
            while attr + 4 <= offset + length:
                alen, atype = _RTATTR.unpack_from(data, attr)
                if alen < 4:
                    break
                if atype == _RTA_DST:
                    raw = data[attr + 4:attr + alen]
                    address = ipaddress.ip_address(bytes(raw)) if family in (socket.AF_INET, socket.AF_INET6) else None
                    if address is not None:
                        found.append(f"{address}/{dst_len}")
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return found
