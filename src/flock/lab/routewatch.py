"""Watch a namespace's routes to some prefixes, with timestamps, as the kernel changes them.

A raw rtnetlink socket opened inside the namespace joins the IPv4 and IPv6 route groups
and the link group; a thread reads it, stamps each read with CLOCK_MONOTONIC as soon as
it returns, and decodes the next hops from the messages themselves (no ``ip`` subprocess
in the loop, which would make a later message, e.g. the second address family's, look
late by the subprocess's ~10 ms). Next hops are kept per prefix: a new route (or a
replace) sets them, an appended one adds, a deletion removes those it names; a deleted
link takes its IPv4 routes along unannounced, so it clears them here too. Given a
``protocol``, only routes of that rtm_protocol count: on a node, flock's advertised
routes (a route re-tagged as withdrawn still forwards, but no longer attracts traffic
from the fabric, so for the lab it is gone). This is how
the lab measures withdrawal latency and counts route changes at the ToR; the tests'
netlink monitor uses the same socket and parser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterable

from flock.adapters import rtnetlink as rtnl
from flock.adapters.netns import enter as enter_netns
from flock.adapters.netns import named as named_netns


@dataclasses.dataclass(frozen=True)
class RouteChange:
    at: float  # time.monotonic() when the kernel announced it
    prefix: str
    nexthops: frozenset[str]  # "via X dev Y", empty when the route is gone


NETLINK_ADD_MEMBERSHIP = 1  # linux/netlink.h, a socket option
NLM_F_APPEND = 0x800  # linux/netlink.h, on a new-route notification: a next hop was added


def link_names(netns: str) -> dict[int, str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    return {link["ifindex"]: link["ifname"] for link in json.loads(out or "[]")}


def nexthops(netns: str, prefix: str, protocol: int | None = None) -> frozenset[str]:
    family = "-6" if ":" in prefix else "-4"
    only = ["proto", str(protocol)] if protocol is not None else []
    out = subprocess.run(["ip", "-n", netns, family, "-j", "route", "show", "exact", prefix, *only],
                         capture_output=True, text=True, timeout=10).stdout
    hops: set[str] = set()
    for route in json.loads(out or "[]"):
        for hop in route.get("nexthops") or [route]:
            if "gateway" in hop:
                hops.add(f"via {hop['gateway']} dev {hop['dev']}")
    return frozenset(hops)


class RouteWatch:
    def __init__(self, netns: str, prefixes: Iterable[str], protocol: int | None = None) -> None:
        self.netns = netns
        self.protocol = protocol
        self.prefixes = {str(ipaddress.ip_network(p)) for p in prefixes}
        self.changes: list[RouteChange] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock = route_socket(netns, links=True)  # bound first: no change after the reads below is missed
        self._names = link_names(netns)
        self.current = {p: nexthops(netns, p, protocol) for p in self.prefixes}
        self.initial = dict(self.current)  # the next hops when the watch started
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
        """When no next hop starting with ``gone`` was left in ``prefix``'s route, first
        time after ``since`` (``gone``: "via 192.0.2.6 dev fl1", or "via 203.0.113.2 dev ")."""
        for change in self.history(prefix):
            if change.at >= since and not any(hop.startswith(gone) for hop in change.nexthops):
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
            for prefix, hops in self._apply(data):
                with self._lock:
                    if hops != self.current.get(prefix):
                        self.current[prefix] = hops
                        self.changes.append(RouteChange(now, prefix, hops))

    def _apply(self, data: bytes) -> list[tuple[str, frozenset[str]]]:
        """The watched prefixes' next hops after each message of one read, in order."""
        after: list[tuple[str, frozenset[str]]] = []
        state = dict(self.current)
        for kind, flags, _seq, _pid, start, end in rtnl.messages(data):
            if kind == rtnl.RTM_NEWLINK:
                index, name = rtnl.link(data, start, end)
                if name is not None:
                    self._names[index] = name
            elif kind == rtnl.RTM_DELLINK:
                index, name = rtnl.link(data, start, end)
                gone = f" dev {name or self._names.get(index, '?')}"
                self._names.pop(index, None)
                for prefix, hops in state.items():
                    if any(hop.endswith(gone) for hop in hops):
                        # IPv4 routes over a deleted link go unannounced, multipath ones whole.
                        left = frozenset() if ":" not in prefix else frozenset(h for h in hops if not h.endswith(gone))
                        state[prefix] = left
                        after.append((prefix, left))
            elif kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
                _family, dst_len, _src, table, proto, _type, _flags, attrs = rtnl.route(data, start, end)
                if table != rtnl.RT_TABLE_MAIN or rtnl.RTA_DST not in attrs:
                    continue
                dst_start, dst_end = attrs[rtnl.RTA_DST]
                prefix = f"{rtnl.address(data[dst_start:dst_end])}/{dst_len}"
                if prefix not in state:
                    continue
                hops = self._hops(data, attrs)
                if self.protocol is not None and proto != self.protocol:
                    if kind == rtnl.RTM_DELROUTE:
                        continue  # another protocol's route went: not the one watched
                    state[prefix] = frozenset()  # a replace by another protocol's route (one per key)
                elif kind == rtnl.RTM_DELROUTE:
                    state[prefix] = state[prefix] - hops if hops else frozenset()
                elif flags & NLM_F_APPEND:
                    state[prefix] = state[prefix] | hops
                else:
                    state[prefix] = hops
                after.append((prefix, state[prefix]))
        return after

    def _hops(self, data: bytes, attrs: dict[int, rtnl.Span]) -> frozenset[str]:
        """A route message's next hops as ``ip`` shows them: "via GATEWAY dev NAME"."""
        found: list[tuple[int, dict[int, rtnl.Span]]] = []
        if rtnl.RTA_MULTIPATH in attrs:
            found = rtnl.nexthops(data, attrs[rtnl.RTA_MULTIPATH])
        elif rtnl.RTA_OIF in attrs:
            found = [(rtnl.u32(data, attrs[rtnl.RTA_OIF]), attrs)]
        hops = set()
        for index, hop_attrs in found:
            if rtnl.RTA_GATEWAY in hop_attrs:
                start, end = hop_attrs[rtnl.RTA_GATEWAY]
                hops.add(f"via {rtnl.address(data[start:end])} dev {self._names.get(index, f'if{index}')}")
        return frozenset(hops)


def route_socket(netns: str, *, links: bool = False, nexthops: bool = False) -> socket.socket:
    """A route-group netlink socket that belongs to ``netns`` (opened from a thread inside it).

    ``links``: also join the link group, for link deletions. The kernel announces no
    RTM_DELROUTE for the IPv4 routes it flushes with a deleted device: only the link's
    deletion shows that they are gone. ``nexthops``: also join RTNLGRP_NEXTHOP (next-hop
    object changes; a group number above 31, so joined with NETLINK_ADD_MEMBERSHIP).
    """
    result: dict[str, socket.socket | BaseException] = {}

    def opener() -> None:
        try:
            enter_netns(named_netns(netns))
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: a burst of changes is not dropped
                sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)
            sock.bind((0, rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE | (rtnl.RTMGRP_LINK if links else 0)))
            if nexthops:
                sock.setsockopt(rtnl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, rtnl.RTNLGRP_NEXTHOP)
            result["sock"] = sock
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=opener)  # ends right after: nothing stays in the netns
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Notification:
    """One RTM_NEWROUTE / RTM_DELROUTE (or RTM_DELLINK) as the kernel announced it."""

    kind: str  # "new" or "del"; "link-del" for a deleted link
    prefix: str  # "198.51.100.10/32"; "default" / "default (v6)" for a default route; a link's name
    protocol: int  # rtm_protocol (0 for a link)

    def __str__(self) -> str:
        return f"{self.kind} {self.prefix} proto {self.protocol}"


def notifications(data: bytes) -> list[Notification]:
    """The route (and link deletion) notifications in one read from the socket (others skipped)."""
    found = []
    for kind, _flags, _seq, _pid, start, end in rtnl.messages(data):
        if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
            family, dst_len, _src_len, _table, protocol, _type, _flags, attrs = rtnl.route(data, start, end)
            prefix = "default" if family == socket.AF_INET else "default (v6)"
            if rtnl.RTA_DST in attrs:
                dst_start, dst_end = attrs[rtnl.RTA_DST]
                prefix = f"{rtnl.address(data[dst_start:dst_end])}/{dst_len}"
            found.append(Notification("new" if kind == rtnl.RTM_NEWROUTE else "del", prefix, protocol))
        elif kind == rtnl.RTM_DELLINK:
            _index, name = rtnl.link(data, start, end)
            if name is not None:
                found.append(Notification("link-del", name, 0))
    return found
