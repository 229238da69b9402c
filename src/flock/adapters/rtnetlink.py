"""rtnetlink on the wire: the structs, message and attribute walking, and the route and
link decoding that flock's raw netlink sockets share.

Three places read netlink without pyroute2: the netlink adapter's route and link dumps
(:mod:`flock.adapters.netlink`, where pyroute2's decoding costs ~0.1-0.2 ms a message),
the pod plumbing's batched address requests and their acks
(:mod:`flock.adapters.plumbing`), and the lab's route watch (:mod:`flock.lab.routewatch`,
which the tests' route monitor uses too). They all decode with the few ``struct``\\ s
below, from linux/netlink.h, linux/rtnetlink.h and linux/if_link.h.

Speed matters here: a dump of 5,000 routes walks ~50,000 attributes. So attributes are
returned as spans (type -> value start and end in the buffer), nothing is copied until a
caller asks for a value, and the walkers are plain loops (bench/route_dump.py).
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterator
from typing import Final

from flock.core.model import IPAddress

# linux/netlink.h
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # acks carry no copy of the request
NETLINK_GET_STRICT_CHK: Final = 12
NLMSG_ERROR: Final = 2  # an ack: a negative errno, 0 for success
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300

# linux/rtnetlink.h
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_ROUTE: Final = 0x400
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RT_TABLE_MAIN: Final = 254
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RTN_UNICAST: Final = 1
RTM_F_CLONED: Final = 0x200
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_MULTIPATH: Final = 9
RTA_TABLE: Final = 15
RTA_NH_ID: Final = 30

# linux/if_link.h
IFLA_IFNAME: Final = 3

NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
# family, dst_len, src_len, tos, table, protocol, scope, type, flags:
RTMSG: Final = struct.Struct("=BBBBBBBBI")
IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTATTR: Final = struct.Struct("=HH")  # length, type
RTNEXTHOP: Final = struct.Struct("=HBBi")  # length, flags, hops, ifindex
U32: Final = struct.Struct("=I")
I32: Final = struct.Struct("=i")

Span = tuple[int, int]
"""Where a value lies in a buffer: ``data[start:end]``."""


def align4(length: int) -> int:
    return (length + 3) & ~3


def describe_errno(code: int) -> str:
    """A kernel error number for a person: "Network is unreachable (netlink 101)"."""
    return f"{os.strerror(code)} (netlink {code})"


Message = tuple[int, int, int, int, int, int]
"""One netlink message in a buffer: (type, flags, sequence, port id, payload start,
payload end). A plain tuple, unpacked by callers: a named one costs a dump of 5,000
routes ~2 ms more."""


def messages(data: bytes | bytearray, size: int | None = None) -> Iterator[Message]:
    """The netlink messages in ``data[:size]`` (default: all of it), in order.

    A header with an impossible length ends the walk: what follows cannot be framed.
    """
    size = len(data) if size is None else size
    offset = 0
    unpack = NLMSGHDR.unpack_from
    while offset + NLMSGHDR.size <= size:
        length, kind, flags, seq, pid = unpack(data, offset)
        if length < NLMSGHDR.size:
            return
        yield kind, flags, seq, pid, offset + NLMSGHDR.size, offset + length
        offset += (length + 3) & ~3


def error_code(data: bytes | bytearray, start: int) -> int:
    """The errno of the NLMSG_ERROR whose payload starts at ``start`` (positive), 0 for an ack."""
    return -int(I32.unpack_from(data, start)[0])


def attributes(data: bytes | bytearray, start: int, end: int) -> dict[int, Span]:
    """type -> value span of the rtattrs in ``data[start:end]`` (the last one of a type wins).

    A plain loop filling a dict, not a generator: a route dump calls this ~10 times per
    route, and parsing is most of its cost.
    """
    spans = {}
    unpack = RTATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            break
        spans[kind & 0x3FFF] = (start + 4, start + length)  # without the NLA_F_* bits
        start += (length + 3) & ~3
    return spans


def u32(data: bytes | bytearray, span: Span) -> int:
    return int(U32.unpack_from(data, span[0])[0])


def address(raw: bytes) -> IPAddress:
    """The address packed in ``raw`` (4 or 16 bytes)."""
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    return ipaddress.IPv6Address(raw)


Route = tuple[int, int, int, int, int, int, int, dict[int, Span]]
"""The parts of an RTM_NEWROUTE / RTM_DELROUTE flock reads: (family, dst_len, src_len,
table, protocol, type, flags, attribute spans). ``table`` is RTA_TABLE when present (it
holds tables above 255), else rtm_table. A plain tuple, like :data:`Message`."""


def route(data: bytes | bytearray, start: int, end: int) -> Route:
    """Decode the route message whose payload is ``data[start:end]``."""
    family, dst_len, src_len, _tos, table, protocol, _scope, kind, flags = RTMSG.unpack_from(data, start)
    attrs = attributes(data, start + RTMSG.size, end)
    if RTA_TABLE in attrs:
        table = U32.unpack_from(data, attrs[RTA_TABLE][0])[0]
    return family, dst_len, src_len, table, protocol, kind, flags, attrs


def nexthops(data: bytes | bytearray, span: Span) -> list[tuple[int, dict[int, Span]]]:
    """(ifindex, attribute spans) of each rtnexthop in an RTA_MULTIPATH value."""
    hops = []
    offset, end = span
    while offset + RTNEXTHOP.size <= end:
        length, _flags, _hops, ifindex = RTNEXTHOP.unpack_from(data, offset)
        if length < RTNEXTHOP.size:
            break
        hops.append((ifindex, attributes(data, offset + RTNEXTHOP.size, offset + length)))
        offset += (length + 3) & ~3
    return hops


def link(data: bytes | bytearray, start: int, end: int) -> tuple[int, str | None]:
    """(ifindex, name) of the link message whose payload is ``data[start:end]``."""
    index = int(IFINFOMSG.unpack_from(data, start)[2])
    span = attributes(data, start + IFINFOMSG.size, end).get(IFLA_IFNAME)
    if span is None:
        return index, None
    return index, bytes(data[span[0]:span[1]]).split(b"\0", 1)[0].decode()
