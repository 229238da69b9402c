"""Count the route changes the kernel announces in a namespace during a block.

    with watch_routes(node) as seen:
        await reconciler.run_pass()
    assert seen.changes(protocol=201) == []      # a quiet pass wrote nothing

A raw rtnetlink socket made inside the namespace joins the IPv4 and IPv6 route
multicast groups before the block runs (bind() returns once the subscription is live,
so nothing is missed at the start, unlike ``ip monitor`` whose start-up cannot be
observed). After the block and a settle delay, everything queued on the socket is read
without blocking: RTM_NEWROUTE and RTM_DELROUTE are recorded, nothing else. No thread
and no subprocess, so nothing can be left running; the socket is closed in ``finally``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import socket
import struct
import time
from collections.abc import Iterator

from pyroute2 import netns as pyroute2_netns

_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_ROUTE = 0x400
_RTM_NEWROUTE = 24
_RTM_DELROUTE = 25
_SO_RCVBUFFORCE = 33
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_RTA_DST = 1


@dataclasses.dataclass(frozen=True)
class RouteChange:
    """One route notification: ``new`` or ``del``, the prefix and its protocol."""

    kind: str
    prefix: str
    protocol: int

    def __str__(self) -> str:
        return f"{self.kind} {self.prefix} proto {self.protocol}"


@dataclasses.dataclass
class RouteChanges:
    """What :func:`watch_routes` saw; filled in when the ``with`` block ends."""

    netns: str
    seen: list[RouteChange] = dataclasses.field(default_factory=list)

    def changes(self, protocol: int | None = None) -> list[RouteChange]:
        """The notifications, optionally only those of one rtm_protocol."""
        return [c for c in self.seen if protocol is None or c.protocol == protocol]


@contextlib.contextmanager
def watch_routes(netns: str, *, settle: float = 0.5) -> Iterator[RouteChanges]:
    """Record route notifications in ``netns`` during the block (plus ``settle`` s after)."""
    sock = pyroute2_netns.create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                        socket.NETLINK_ROUTE, flags=0)
    result = RouteChanges(netns)
    try:
        # Big enough that a burst of thousands of routes is not dropped (ENOBUFS below).
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
        sock.bind((0, _RTMGRP_IPV4_ROUTE | _RTMGRP_IPV6_ROUTE))
        yield result
        time.sleep(settle)
        sock.setblocking(False)
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise AssertionError(f"route monitor in {netns} overflowed: "
                                         "notifications were lost") from exc
                raise
            result.seen.extend(_parse(data))
    finally:
        sock.close()


def _parse(data: bytes) -> Iterator[RouteChange]:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if length < _NLMSGHDR.size:
            return
        if kind in (_RTM_NEWROUTE, _RTM_DELROUTE):
            body = offset + _NLMSGHDR.size
            family, dst_len, *_, protocol, _scope, _type, _flags = _RTMSG.unpack_from(data, body)
            dst = "default"
            attr = body + _RTMSG.size
            while attr + _RTATTR.size <= offset + length:
                attr_len, attr_type = _RTATTR.unpack_from(data, attr)
                if attr_len < _RTATTR.size:
                    break
                if attr_type == _RTA_DST:
                    raw = data[attr + _RTATTR.size:attr + attr_len]
                    dst = f"{ipaddress.ip_address(raw)}/{dst_len}"
                attr += (attr_len + 3) & ~3
            if dst == "default" and family == socket.AF_INET6:
                dst = "default (v6)"
            yield RouteChange("new" if kind == _RTM_NEWROUTE else "del", dst, protocol)
        offset += (length + 3) & ~3
