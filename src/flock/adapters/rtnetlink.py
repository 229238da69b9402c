"""rtnetlink on the wire: the structs, message and attribute walking, the route and link
decoding, the route and address encoding, and the one socket that sends batches of
requests and matches their acks, which flock's raw netlink sockets share.

Three places talk netlink without pyroute2: the netlink adapter's route writes and its
route and link dumps (:mod:`flock.adapters.netlink`, where pyroute2 spends ~0.4 ms
encoding a route and ~0.1-0.2 ms decoding one), the pod plumbing's batched address
requests (:mod:`flock.adapters.plumbing`), and the lab's route watch
(:mod:`flock.lab.routewatch`, which the tests' route monitor uses too). They all use the
few ``struct``\\ s below, from linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h and
linux/if_link.h.

Speed matters here: the agent dumps all its routes every ``resyncSeconds`` (drift
repair), and 10,000 routes hold ~100,000 attributes. So :class:`RouteDecoder` decodes a
route message only if the last dump did not hold the same bytes, and then by its shape
(the same bytes but for the destination) if it can, and :class:`NexthopNames` names each
next-hop set once. The general walkers (:func:`attributes`, :func:`route`) return spans
(type -> value start and end in the buffer), copy nothing until a caller asks for a
value, and are plain loops. Measured with bench/route_dump.py (a third of the routes
multipath, ~200 next-hop sets; best of 11, uvloop, 2 busy cores; ``ip -j route show
proto N`` -4 and -6 in the same run, the process alone, nothing decoded):

                                            1,000 routes      10,000 routes
    ip -j route show                          7.2 ms            49 ms
    the kernel's part (RtnlSocket.dump)       0.8 ms (0.10x)    14 ms (0.29x)
    + RouteDecoder + NexthopNames, a dump
      like the last one                       1.3 ms (0.18x)    24-33 ms (0.5-0.67x)
      after none (start-up)                   4.7 ms (0.65x)    41-46 ms (0.8-0.95x)
    NetlinkRoutes.dump() before: route() and
      nexthops() per route (attribute dicts),
      a Nexthop per next hop per dump         6.4 ms (0.89x)    102-154 ms (2.1-3.2x)
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final

from flock.core.model import IPAddress, Nexthop, Nexthops, sorted_nexthops

# linux/netlink.h
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10  # acks carry no copy of the request
NETLINK_GET_STRICT_CHK: Final = 12
NLMSG_ERROR: Final = 2  # an ack: a negative errno, 0 for success
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300
NLM_F_REPLACE: Final = 0x100  # with NEW requests
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
SO_RCVBUFFORCE: Final = 33  # asm-generic/socket.h; Python's socket module lacks it

# linux/rtnetlink.h
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_ROUTE: Final = 0x400
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RT_TABLE_MAIN: Final = 254
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RT_SCOPE_NOWHERE: Final = 255  # in a delete: match a route of any scope
RTN_UNICAST: Final = 1
RTM_F_CLONED: Final = 0x200
RTNH_F_ONLINK: Final = 0x4  # a next hop's gateway is on the link, whatever its addresses
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_MULTIPATH: Final = 9
RTA_TABLE: Final = 15
RTA_NH_ID: Final = 30
RTM_NEWNEXTHOP: Final = 104
RTM_DELNEXTHOP: Final = 105
RTM_GETNEXTHOP: Final = 106
RTNLGRP_NEXTHOP: Final = 32

# linux/nexthop.h
NHA_ID: Final = 1
NHA_GROUP: Final = 2
NHA_GROUP_TYPE: Final = 3
NHA_OIF: Final = 5
NHA_GATEWAY: Final = 6
NHA_RES_GROUP: Final = 12
NHA_RES_GROUP_BUCKETS: Final = 1
NHA_RES_GROUP_IDLE_TIMER: Final = 2
NHA_RES_GROUP_UNBALANCED_TIMER: Final = 3
NEXTHOP_GRP_TYPE_MPATH: Final = 0
NEXTHOP_GRP_TYPE_RES: Final = 1
USER_HZ: Final = 100  # the clock_t of the resilient group timers: 1/100 s

# linux/if_addr.h
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_F_NODAD: Final = 0x02

# linux/if_link.h
IFLA_IFNAME: Final = 3

NLA_F_NESTED: Final = 0x8000

NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
# family, dst_len, src_len, tos, table, protocol, scope, type, flags:
RTMSG: Final = struct.Struct("=BBBBBBBBI")
IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTATTR: Final = struct.Struct("=HH")  # length, type
RTNEXTHOP: Final = struct.Struct("=HBBi")  # length, flags, hops, ifindex
NHMSG: Final = struct.Struct("=BBBBI")  # family, scope, protocol, reserved, flags
NEXTHOP_GRP: Final = struct.Struct("=IBBH")  # id, weight - 1, reserved, reserved
U16: Final = struct.Struct("=H")
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


def nexthop_flags(data: bytes | bytearray, span: Span) -> list[int]:
    """rtnh_flags of each rtnexthop in an RTA_MULTIPATH value (RTNH_F_ONLINK ...)."""
    flags = []
    offset, end = span
    while offset + RTNEXTHOP.size <= end:
        length, hop_flags, _hops, _ifindex = RTNEXTHOP.unpack_from(data, offset)
        if length < RTNEXTHOP.size:
            break
        flags.append(hop_flags)
        offset += (length + 3) & ~3
    return flags


Hop = tuple[bytes, int]
"""One next hop of a route as the kernel gives it: (packed gateway, ifindex)."""

DecodedRoute = tuple[IPAddress, tuple[Hop, ...], str]
"""One route of a :class:`RouteDecoder`'s protocol: (destination, next hops in the kernel's
order, problem). ``problem`` says why flock would not have written the route (then the
next hops are ``()``), e.g. "198.51.100.0/24: not a host route"; "" when it is fine."""

_IP6_RT_PRIO_USER: Final = 1024  # the kernel's metric for an IPv6 route written without one


_Verdict = tuple[bool, int, tuple[Hop, ...], str, bool, int]
"""What a route message says apart from its destination: (skip it, dst_len, next hops,
problem, every next hop onlink, the next-hop object it uses or 0)."""


class RouteDecoder:
    """Decodes the messages of dumps of one family's routes into :data:`DecodedRoute`\\ s:
    those of table main and ``protocol`` that are not cloned and not device routes (a pod's
    own /32 or /128 on its veth); the rest are skipped. A route flock would not have
    written (not a host route, not unicast, another metric than the kernel's default, a
    nexthop object, a next hop without a gateway of the family) comes with its problem.
    The destination is the first RTA_DST (the kernel writes one), the family's zero
    address without one.

    A dump mostly repeats the one before, so the decoder remembers the last dump's
    messages, byte for byte, with what they decoded to, and decodes only those it has not
    seen: a repeated dump costs one dictionary look-up per route, and returns the same
    objects as the last one, which makes comparing the two cheap as well. A message is
    decoded from its bytes alone, so an equal message decodes equal.

    A message it has not seen is still not walked attribute by attribute if it decoded
    one of the same *shape* in this dump or the last: the same bytes but for the
    destination (every route to the same next hops, with the same metric, flags, ...).
    Only a new shape is decoded in full.

    :attr:`not_onlink` holds the destinations of the last dump's routes (without a
    problem) of which a next hop is not ``onlink``: BIRD will not learn those
    (:func:`route_request` writes every next hop onlink), so flock writes them again.

    A route that points at a next-hop object (RTA_NH_ID) is flock's only if the id is in
    ``nexthop_ids`` (flock's resilient groups, :mod:`flock.adapters.nhgroups`); the
    kernel dumps it with the group's next hops expanded (RTA_MULTIPATH, or RTA_GATEWAY +
    RTA_OIF for one; ``net.ipv4.nexthop_compat_mode=1``, the default), which are decoded
    as for any route. :attr:`groups` maps the last dump's destinations to their object.

    Memory: the last dump's messages, ~400 bytes a route with the routes themselves (4 MB
    at 10,000). One decoder per (family, protocol) dumped; not thread-safe. The figures
    are in the module docstring.
    """

    def __init__(self, family: int, protocol: int, nexthop_ids: range = range(0)) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"address family must be AF_INET or AF_INET6, not {family}")
        self.family = family
        self.protocol = protocol
        self.nexthop_ids = nexthop_ids
        self._size = 4 if family == socket.AF_INET else 16
        self._priority = 0 if family == socket.AF_INET else _IP6_RT_PRIO_USER
        self._address = ipaddress.IPv4Address if family == socket.AF_INET else ipaddress.IPv6Address
        # The last dump's messages -> their routes (None: skipped) and whether every next
        # hop is onlink, and shapes -> verdicts.
        self._routes: dict[bytes, tuple[DecodedRoute | None, bool, int]] = {}
        self._shapes: dict[bytes, _Verdict] = {}
        self.not_onlink: set[IPAddress] = set()
        """Destinations of the last dump's routes with a next hop that is not onlink."""
        self.groups: dict[IPAddress, int] = {}
        """Destinations of the last dump's routes that use a next-hop object of flock's -> its id."""

    def decode(self, messages: Iterable[tuple[int, bytes | bytearray]]) -> list[DecodedRoute]:
        """The routes in one dump's ``messages``, (nlmsg_type, payload) as
        :meth:`RtnlSocket.dump` returns them, in order; other message types are skipped."""
        known, self._routes = self._routes, {}
        shapes, self._shapes = self._shapes, {}
        routes = self._routes
        found = []
        not_onlink = self.not_onlink = set()
        groups: dict[IPAddress, int] = {}
        self.groups = groups
        for kind, payload in messages:
            if kind != RTM_NEWROUTE:
                continue
            msg = bytes(payload)
            if msg in known:
                route, onlink, group = routes[msg] = known[msg]
            else:
                route, onlink, group = routes[msg] = self._decode(msg, shapes)
            if route is not None:
                found.append(route)
                if not onlink:
                    not_onlink.add(route[0])
                if group:
                    groups[route[0]] = group
        return found

    def _decode(self, msg: bytes, shapes: dict[bytes, _Verdict]) -> tuple[DecodedRoute | None, bool, int]:
        """A message not seen in the last dump: by its shape if that was seen, else in full."""
        start = end = 0
        offset, stop = RTMSG.size, len(msg)
        while offset + 4 <= stop:  # to the first RTA_DST: the second attribute, in practice
            length, kind = RTATTR.unpack_from(msg, offset)
            if length < 4:
                break
            if kind & 0x3FFF == RTA_DST:
                start, end = offset + 4, offset + length
                break
            offset += (length + 3) & ~3
        # The verdict reads no destination, so it is a function of the shape: the message
        # without the value of its first RTA_DST (whose position the bytes before it fix).
        shape = msg[:start] + msg[end:]
        verdict = self._shapes.get(shape) or shapes.get(shape) or self._verdict(msg)
        self._shapes[shape] = verdict
        skip, dst_len, hops, problem, onlink, group = verdict
        if skip:
            return None, True, 0
        size = self._size
        dst = msg[start:end]
        address = self._address(dst if len(dst) == size else bytes(size))
        if problem:  # formatted only here: str() of an IPv6 address is slow
            return (address, (), f"{address}/{dst_len}: {problem}"), True, 0
        return (address, hops, ""), onlink, group

    def _verdict(self, msg: bytes) -> _Verdict:
        """Everything about one route message but its destination: see :data:`_Verdict`."""
        skip = (True, 0, (), "", True, 0)
        if len(msg) < RTMSG.size:
            return skip
        family, dst_len, src_len, _tos, table, protocol, _scope, rtype, rflags = RTMSG.unpack_from(msg, 0)
        if family != self.family or protocol != self.protocol or rflags & RTM_F_CLONED:
            return skip
        # The attributes flock reads, in one walk (the last one of a type wins).
        gateway = b""
        oif = multipath = None
        priority = 0
        nexthop_object = 0
        unpack = RTATTR.unpack_from
        offset, end = RTMSG.size, len(msg)
        while offset + 4 <= end:
            length, kind = unpack(msg, offset)
            if length < 4 or offset + length > end:
                break
            kind &= 0x3FFF  # without the NLA_F_* bits
            if kind == RTA_GATEWAY:
                gateway = msg[offset + 4:offset + length]
            elif kind == RTA_MULTIPATH:
                multipath = (offset + 4, offset + length)
            elif length >= 8 and kind in (RTA_OIF, RTA_TABLE, RTA_PRIORITY):
                value = int(U32.unpack_from(msg, offset + 4)[0])
                if kind == RTA_OIF:
                    oif = value
                elif kind == RTA_TABLE:
                    table = value  # holds tables above 255
                else:
                    priority = value
            elif kind == RTA_NH_ID and length >= 8:
                nexthop_object = int(U32.unpack_from(msg, offset + 4)[0])
            offset += (length + 3) & ~3
        if not gateway and multipath is None and oif is not None:
            # A device route: a pod's own /32 or /128 on its veth (CNI plumbing; IPv6 routes
            # have no scope to tell them by). Never an anycast route, and expected.
            return skip
        if table != RT_TABLE_MAIN:
            return skip
        size = self._size
        hops: list[Hop] = []
        problem = ""
        onlink = bool(rflags & RTNH_F_ONLINK)  # one next hop; several: each rtnexthop's (below)
        if dst_len != size * 8 or src_len != 0:
            problem = "not a host route"
        elif rtype != RTN_UNICAST:
            problem = f"route type {rtype}, not unicast"
        elif priority != self._priority:
            problem = f"metric {priority}, flock writes {self._priority}"
        elif nexthop_object and nexthop_object not in self.nexthop_ids:
            problem = "uses a nexthop object, not a gateway"
        elif multipath is not None:
            for ifindex, hop_attrs in nexthops(msg, multipath):
                start, stop = hop_attrs.get(RTA_GATEWAY, (0, 0))
                if stop - start != size:
                    problem = "a next hop has no gateway of its family"
                    break
                hops.append((msg[start:stop], ifindex))
            onlink = all(flags & RTNH_F_ONLINK for flags in nexthop_flags(msg, multipath))
        elif oif is None or not gateway:
            problem = "no gateway"
        elif len(gateway) != size:
            problem = "no gateway of its family"
        else:
            hops.append((gateway, oif))
        if not problem and not hops:
            problem = "no next hops"
        return False, dst_len, tuple(hops) if not problem else (), problem, onlink, nexthop_object


class NexthopNames:
    """Names the next hops of decoded routes (ifindex -> link name) and gathers the routes
    into flock's route table: :meth:`table`.

    Routes share next-hop sets (one pod serves many anycast addresses), and a table mostly
    repeats the last one, so each distinct set is named once per table, and a set seen in
    the last table whose links still have the same names is given the same
    :data:`~flock.core.model.Nexthops` object as then. One per protocol dumped; not
    thread-safe.
    """

    def __init__(self) -> None:
        # The last table's next-hop sets -> (link names, Nexthops), or why they have none.
        self._last: dict[tuple[Hop, ...], tuple[tuple[str, ...], Nexthops] | str] = {}

    def table(self, routes: Iterable[DecodedRoute],
              ifname: Callable[[int], str | None]) -> tuple[dict[IPAddress, Nexthops], set[str]]:
        """flock's table of ``routes`` (address -> next hops, canonical) and the problems that
        kept routes out of it: those :class:`RouteDecoder` found, and "<prefix>: no link
        with index N" for a next hop whose ifindex ``ifname`` does not know (the link went
        away mid-dump; the route will too). Next hops of an address given in several
        routes are merged: kernels before 4.11 dump each IPv6 multipath next hop as a
        route of its own."""
        known, self._last = self._last, {}
        named = self._last
        table: dict[IPAddress, Nexthops] = {}
        problems: set[str] = set()
        for address, hops, problem in routes:
            if problem:
                problems.add(problem)
                continue
            entry = named.get(hops)
            if entry is None:
                entry = named[hops] = self._name(hops, known.get(hops), ifname)
            if isinstance(entry, str):
                problems.add(f"{address}/{address.max_prefixlen}: {entry}")
                continue
            nexthops = table.setdefault(address, entry[1])
            if nexthops is not entry[1]:
                table[address] = sorted_nexthops(nexthops + entry[1])
        return table, problems

    @staticmethod
    def _name(hops: tuple[Hop, ...], before: tuple[tuple[str, ...], Nexthops] | str | None,
              ifname: Callable[[int], str | None]) -> tuple[tuple[str, ...], Nexthops] | str:
        names = []
        for _gateway, index in hops:
            name = ifname(index)
            if name is None:
                return f"no link with index {index}"
            names.append(name)
        if isinstance(before, tuple) and before[0] == tuple(names):
            return before
        nexthops = [Nexthop(address(gateway), name) for (gateway, _), name in zip(hops, names, strict=True)]
        return tuple(names), (nexthops[0],) if len(nexthops) == 1 else sorted_nexthops(nexthops)


def link(data: bytes | bytearray, start: int, end: int) -> tuple[int, str | None]:
    """(ifindex, name) of the link message whose payload is ``data[start:end]``."""
    index = int(IFINFOMSG.unpack_from(data, start)[2])
    span = attributes(data, start + IFINFOMSG.size, end).get(IFLA_IFNAME)
    if span is None:
        return index, None
    return index, bytes(data[span[0]:span[1]]).split(b"\0", 1)[0].decode()


# -- encoding -----------------------------------------------------------------------

Request = tuple[int, int, bytes]
"""One netlink request for :meth:`RtnlSocket.transact`: (nlmsg_type, nlmsg_flags, payload).
The socket adds the header, NLM_F_REQUEST, NLM_F_ACK and the sequence number."""

_OIF_ATTR: Final = RTATTR.pack(8, RTA_OIF)
_GATEWAY_ATTR: Final = {4: RTATTR.pack(8, RTA_GATEWAY), 16: RTATTR.pack(20, RTA_GATEWAY)}
_DST_ATTR: Final = {4: RTATTR.pack(8, RTA_DST), 16: RTATTR.pack(20, RTA_DST)}
_FAMILY: Final = {4: socket.AF_INET, 16: socket.AF_INET6}


def route_request(dst: bytes, protocol: int, hops: Sequence[tuple[bytes, int]]) -> bytes:
    """The payload of an RTM_NEWROUTE for the host route to ``dst`` (4 or 16 packed bytes).

    Table main, scope universe, type unicast, no metric (the kernel's default: 0 for
    IPv4, 1024 for IPv6). One ``(gateway, ifindex)`` hop gives the plain RTA_GATEWAY +
    RTA_OIF shape, several one RTA_MULTIPATH of weight-1 next hops, as ``ip route`` writes
    them. Gateways must be of ``dst``'s family (the caller checks).

    Every next hop is ``onlink`` (RTNH_F_ONLINK): a pod's address is reachable on its veth
    through the pod's own device route, not through an address of the host side, and
    BIRD's kernel protocol refuses to learn a gateway that is not on a connected prefix
    ("strange next-hop") unless the hop says onlink.
    """
    size = len(dst)
    if len(hops) == 1:
        gateway, index = hops[0]
        return (RTMSG.pack(_FAMILY[size], size * 8, 0, 0, RT_TABLE_MAIN, protocol, RT_SCOPE_UNIVERSE,
                           RTN_UNICAST, RTNH_F_ONLINK) + _DST_ATTR[size] + dst
                + _GATEWAY_ATTR[size] + gateway + _OIF_ATTR + U32.pack(index))
    head = RTMSG.pack(_FAMILY[size], size * 8, 0, 0, RT_TABLE_MAIN, protocol, RT_SCOPE_UNIVERSE,
                      RTN_UNICAST, 0) + _DST_ATTR[size] + dst
    nexthops = b"".join(RTNEXTHOP.pack(RTNEXTHOP.size + 4 + size, RTNH_F_ONLINK, 0, index)
                        + _GATEWAY_ATTR[size] + gateway for gateway, index in hops)
    return head + RTATTR.pack(4 + len(nexthops), RTA_MULTIPATH) + nexthops


def route_delete_request(dst: bytes, protocol: int) -> bytes:
    """The payload of an RTM_DELROUTE for the host route to ``dst`` of ``protocol`` only.

    Scope nowhere and type unspec match a route of any scope and type (as ``ip route
    del``); the protocol makes the kernel answer ESRCH rather than delete another's route.
    """
    size = len(dst)
    return RTMSG.pack(_FAMILY[size], size * 8, 0, 0, RT_TABLE_MAIN, protocol, RT_SCOPE_NOWHERE, 0,
                      0) + _DST_ATTR[size] + dst


def route_group_request(dst: bytes, protocol: int, nexthop_id: int) -> bytes:
    """The payload of an RTM_NEWROUTE for the host route to ``dst`` through next-hop
    object ``nexthop_id`` (RTA_NH_ID: ``ip route … nhid N``); otherwise as :func:`route_request`.

    The object's members carry the gateways and their ``onlink`` flag, and the kernel
    dumps the route with them expanded, so BIRD learns it like a multipath route.
    """
    size = len(dst)
    return (RTMSG.pack(_FAMILY[size], size * 8, 0, 0, RT_TABLE_MAIN, protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + _DST_ATTR[size] + dst + _NH_ID_ATTR + U32.pack(nexthop_id))


_NH_ID_ATTR: Final = RTATTR.pack(8, RTA_NH_ID)
_NHA_ID_ATTR: Final = RTATTR.pack(8, NHA_ID)
_NHA_OIF_ATTR: Final = RTATTR.pack(8, NHA_OIF)
_NHA_GATEWAY_ATTR: Final = {4: RTATTR.pack(8, NHA_GATEWAY), 16: RTATTR.pack(20, NHA_GATEWAY)}


def nexthop_request(nexthop_id: int, protocol: int, gateway: bytes, index: int) -> bytes:
    """The payload of an RTM_NEWNEXTHOP for one next-hop object: ``ip nexthop add id N via
    <gateway> dev <index> onlink proto <protocol>`` (family of the gateway, 4 or 16 bytes)."""
    size = len(gateway)
    return (NHMSG.pack(_FAMILY[size], 0, protocol, 0, RTNH_F_ONLINK) + _NHA_ID_ATTR + U32.pack(nexthop_id)
            + _NHA_OIF_ATTR + U32.pack(index) + _NHA_GATEWAY_ATTR[size] + gateway)


def device_nexthop_request(nexthop_id: int, protocol: int, index: int) -> bytes:
    """``ip nexthop add id N dev <index> proto <protocol>`` (IPv4, no gateway): the
    start-up probe's member, on ``lo``."""
    return (NHMSG.pack(socket.AF_INET, 0, protocol, 0, 0) + _NHA_ID_ATTR + U32.pack(nexthop_id)
            + _NHA_OIF_ATTR + U32.pack(index))


def resilient_group_request(nexthop_id: int, protocol: int, members: Sequence[int], *, buckets: int,
                            idle_timer: float, unbalanced_timer: float) -> bytes:
    """The payload of an RTM_NEWNEXTHOP for a resilient group of ``members`` (ids), each of
    weight 1: ``ip nexthop add id N group A/B/… type resilient buckets B idle_timer I
    unbalanced_timer U proto P``. Timers in seconds; on the wire clock_t (1/100 s), as
    iproute2 sends them. Sent with NLM_F_REPLACE to an existing group, it changes the
    members in place: the members that stay keep their buckets."""
    group = b"".join([NEXTHOP_GRP.pack(member, 0, 0, 0) for member in members])  # weight 1 is sent as 0
    return (NHMSG.pack(socket.AF_UNSPEC, 0, protocol, 0, 0) + _NHA_ID_ATTR + U32.pack(nexthop_id)
            + RTATTR.pack(4 + len(group), NHA_GROUP) + group
            + _resilient_tail(buckets, idle_timer, unbalanced_timer))


@functools.lru_cache(maxsize=8)
def _resilient_tail(buckets: int, idle_timer: float, unbalanced_timer: float) -> bytes:
    """The attributes after a resilient group's members: the same for every group of a
    config, so packed once (a first pass writes a group per prefix)."""
    res = (RTATTR.pack(6, NHA_RES_GROUP_BUCKETS) + U16.pack(buckets) + b"\0\0"
           + RTATTR.pack(8, NHA_RES_GROUP_IDLE_TIMER) + U32.pack(round(idle_timer * USER_HZ))
           + RTATTR.pack(8, NHA_RES_GROUP_UNBALANCED_TIMER) + U32.pack(round(unbalanced_timer * USER_HZ)))
    return (RTATTR.pack(6, NHA_GROUP_TYPE) + U16.pack(NEXTHOP_GRP_TYPE_RES) + b"\0\0"
            + RTATTR.pack(4 + len(res), NHA_RES_GROUP | NLA_F_NESTED) + res)


def nexthop_delete_request(nexthop_id: int) -> bytes:
    """The payload of an RTM_DELNEXTHOP for object ``nexthop_id``. Deleting a group deletes
    the routes using it; deleting a member takes it out of its groups: callers order them."""
    return NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _NHA_ID_ATTR + U32.pack(nexthop_id)


@dataclasses.dataclass(frozen=True)
class NexthopObject:
    """One next-hop object as RTM_GETNEXTHOP dumps it: a member (gateway + ifindex) or a group."""

    id: int
    protocol: int
    flags: int = 0
    gateway: bytes = b""
    index: int = 0
    group: tuple[int, ...] = ()
    """A group's member ids (empty for a member)."""
    group_type: int = NEXTHOP_GRP_TYPE_MPATH
    buckets: int = 0
    idle_timer: int = 0
    """clock_t (1/100 s), as the kernel reports it."""
    unbalanced_timer: int = 0


def nexthop_object(data: bytes | bytearray, start: int, end: int) -> NexthopObject:
    """Decode the RTM_NEWNEXTHOP whose payload is ``data[start:end]``."""
    _family, _scope, protocol, _resvd, flags = NHMSG.unpack_from(data, start)
    attrs = attributes(data, start + NHMSG.size, end)
    nexthop_id = u32(data, attrs[NHA_ID]) if NHA_ID in attrs else 0
    if NHA_GROUP in attrs:
        first, last = attrs[NHA_GROUP]
        members = tuple(int(NEXTHOP_GRP.unpack_from(data, offset)[0])
                        for offset in range(first, last - NEXTHOP_GRP.size + 1, NEXTHOP_GRP.size))
        group_type = NEXTHOP_GRP_TYPE_MPATH
        if NHA_GROUP_TYPE in attrs:
            group_type = int(U16.unpack_from(data, attrs[NHA_GROUP_TYPE][0])[0])
        buckets = idle = unbalanced = 0
        if NHA_RES_GROUP in attrs:
            res = attributes(data, *attrs[NHA_RES_GROUP])
            if NHA_RES_GROUP_BUCKETS in res:
                buckets = int(U16.unpack_from(data, res[NHA_RES_GROUP_BUCKETS][0])[0])
            if NHA_RES_GROUP_IDLE_TIMER in res:
                idle = u32(data, res[NHA_RES_GROUP_IDLE_TIMER])
            if NHA_RES_GROUP_UNBALANCED_TIMER in res:
                unbalanced = u32(data, res[NHA_RES_GROUP_UNBALANCED_TIMER])
        return NexthopObject(nexthop_id, protocol, flags, group=members, group_type=group_type, buckets=buckets,
                             idle_timer=idle, unbalanced_timer=unbalanced)
    gateway = b""
    if NHA_GATEWAY in attrs:
        gateway = bytes(data[attrs[NHA_GATEWAY][0]:attrs[NHA_GATEWAY][1]])
    index = u32(data, attrs[NHA_OIF]) if NHA_OIF in attrs else 0
    return NexthopObject(nexthop_id, protocol, flags, gateway=gateway, index=index)


def address_request(index: int, ip: IPAddress) -> bytes:
    """The payload of an RTM_NEWADDR / RTM_DELADDR for host address ``ip`` (/32 or /128,
    no DAD) on link ``index``."""
    packed = ip.packed
    attr = RTATTR.pack(4 + len(packed), IFA_LOCAL) + packed + RTATTR.pack(4 + len(packed), IFA_ADDRESS) + packed
    return IFADDRMSG.pack(_FAMILY[len(packed)], ip.max_prefixlen, IFA_F_NODAD, 0, index) + attr


# -- the socket ---------------------------------------------------------------------

_RECV_BUFFER: Final = 1 << 20  # far above the kernel's 32 KiB dump chunks
_ACK_QUEUE: Final = 4 << 20  # receive queue for a send's acks: each costs ~0.8 KiB of it
_REQUESTS_PER_SEND: Final = 1024  # ~110 KiB of route requests, under the 208 KiB send limit
_DUMP_RETRIES: Final = 5  # a dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is redone


class RtnlSocket:
    """A bound NETLINK_ROUTE socket that joins no multicast group: batches of requests
    with their acks matched back (:meth:`transact`), and dumps (:meth:`dump`,
    :meth:`dump_each`). ``family`` another netlink family that frames its messages the
    same way (NETLINK_NETFILTER: :mod:`flock.adapters.conntrack`).

    Not thread-safe: use it from one thread. ``timeout`` (seconds) bounds each wait for
    the kernel. ``strict`` asks for NETLINK_GET_STRICT_CHK (kernel-filtered dumps,
    >= 4.20); :attr:`strict` says whether the kernel granted it. Every request and dump
    gets a fresh sequence number, so a late answer to an earlier one is recognised and
    dropped.
    """

    def __init__(self, timeout: float, *, strict: bool = False, family: int = socket.NETLINK_ROUTE) -> None:
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, family)
        try:
            self.strict = False
            if strict:
                try:
                    self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
                    self.strict = True
                except OSError:
                    pass
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:  # above net.core.rmem_max; needs CAP_NET_ADMIN, which the agent has
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _ACK_QUEUE)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _ACK_QUEUE)
            self._sock.bind((0, 0))
            # Non-blocking, with explicit waits: a Python socket timeout polls before
            # every recv, which doubles the system calls of reading 10,000 acks.
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._pid: int = self._sock.getsockname()[0]
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _next_seq(self) -> int:
        # 1 .. 2**32 - 1: 0 is what an unsolicited message carries.
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        return self._seq

    def _recv(self, deadline: float) -> int:
        """Receive one datagram into the buffer, waiting until ``deadline`` (monotonic) at
        most: its size. Raises TimeoutError, or OSError (ENOBUFS: the queue overflowed)."""
        while True:
            try:
                size = self._sock.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError(f"no answer from netlink within {self.timeout} s") from None
                continue
            if size > len(self._buffer):
                raise OSError(errno.EMSGSIZE, f"netlink message of {size} bytes truncated")
            return size

    def transact(self, requests: Sequence[Request], *, quiet: bool = False) -> list[int | None]:
        """Send ``requests`` in order, many per ``send``, and match each ack to its request
        by sequence number: one result per request, 0 for success, the kernel's errno
        (positive) for a failure, None when no answer came (outcome unknown).

        The kernel answers every request of a buffer, also after one fails, and handles a
        send's requests inside that ``send`` call (rtnetlink is synchronous), so its acks
        are all queued by the time the call returns: waiting for one that is missing
        means the kernel dropped it (ENOBUFS, the queue overflowed) or it never came. A
        wait longer than ``timeout`` ends the batch: the requests not yet answered, sent
        or not, are None. Raises OSError only when the socket itself fails.

        ``quiet``: ask for an ack only for the last request of each ``send``. The kernel
        answers a refusal whether asked or not (netlink_rcv_skb), in order, so once the
        last request's answer is read every request before it that got none succeeded:
        one read per send and per refusal instead of one per request, and the kernel
        builds no ack for a success. If the kernel dropped answers (ENOBUFS), the
        requests of that send that got none are None (a refusal may have been lost).
        """
        results: list[int | None] = [None] * len(requests)
        pack = NLMSGHDR.pack
        flags_on = NLM_F_REQUEST | NLM_F_ACK
        for first in range(0, len(requests), _REQUESTS_PER_SEND):
            waiting: dict[int, int] = {}  # sequence number -> request index
            parts = []
            last = min(first + _REQUESTS_PER_SEND, len(requests))
            for index in range(first, last):
                kind, flags, payload = requests[index]
                seq = self._next_seq()
                waiting[seq] = index
                asked = flags_on if not quiet or index == last - 1 else NLM_F_REQUEST
                parts.append(pack(NLMSGHDR.size + len(payload), kind, flags | asked, seq, 0))
                parts.append(payload)
            self._sock.send(b"".join(parts))
            if quiet:
                if not self._collect_quiet(waiting, seq, results, range(first, last)):
                    break
            elif not self._collect(waiting, results):
                break
        return results

    def _collect(self, waiting: dict[int, int], results: list[int | None]) -> bool:
        """Read acks into ``results`` until none is ``waiting``: False if some never came."""
        deadline = time.monotonic() + self.timeout
        dropped = False
        buffer = self._buffer
        while waiting:
            try:
                if dropped:  # what the kernel did not drop is queued already: do not wait
                    deadline = 0.0
                size = self._recv(deadline)
            except TimeoutError:
                return dropped  # acks dropped: the socket still works; else: it is stuck
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                dropped = True
                continue
            for kind, _flags, seq, pid, start, _end in messages(buffer, size):
                if kind == NLMSG_ERROR and pid == self._pid and seq in waiting:
                    results[waiting.pop(seq)] = error_code(buffer, start)
        return True

    def _collect_quiet(self, waiting: dict[int, int], last_seq: int, results: list[int | None],
                       sent: range) -> bool:
        """:meth:`_collect` for a quiet send (``sent``: its request indexes, ``last_seq`` the
        sequence number of its last request, the one that asked for an ack): read refusals
        until the last request's answer; then the requests without one succeeded."""
        deadline = time.monotonic() + self.timeout
        buffer = self._buffer
        answered: set[int] = set()
        while last_seq not in answered:
            try:
                size = self._recv(deadline)
            except TimeoutError:
                return False
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Answers were dropped: which requests were refused is unknown, except
                # those whose refusal was read; the queue still holds what was not dropped.
                self._drain(waiting, results)
                return True
            for kind, _flags, seq, pid, start, _end in messages(buffer, size):
                if kind == NLMSG_ERROR and pid == self._pid and seq in waiting:
                    results[waiting[seq]] = error_code(buffer, start)
                    answered.add(seq)
        for index in sent:
            if results[index] is None:
                results[index] = 0
        return True

    def _drain(self, waiting: dict[int, int], results: list[int | None]) -> None:
        """Read what is queued without waiting, noting the refusals of ``waiting``."""
        buffer = self._buffer
        while True:
            try:
                size = self._recv(0.0)
            except TimeoutError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                continue
            for kind, _flags, seq, pid, start, _end in messages(buffer, size):
                if kind == NLMSG_ERROR and pid == self._pid and seq in waiting:
                    results[waiting[seq]] = error_code(buffer, start)

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytearray]]:
        """Every message of one dump as (nlmsg_type, payload); redone if interrupted.

        Raises TimeoutError when the kernel stops answering, OSError when it refuses.
        """
        for _ in range(_DUMP_RETRIES):
            messages_, interrupted = self._dump_once(msg_type, body)
            if not interrupted:
                return messages_
        raise OSError(errno.EINTR, f"dump interrupted {_DUMP_RETRIES} times by concurrent changes")

    def _dump_once(self, msg_type: int, body: bytes) -> tuple[list[tuple[int, bytearray]], bool]:
        found: list[tuple[int, bytearray]] = []

        def keep(kind: int, buffer: bytearray, start: int, end: int) -> None:
            found.append((kind, buffer[start:end]))

        return found, not self.dump_each(msg_type, body, keep)

    def dump_each(self, msg_type: int, body: bytes, each: Callable[[int, bytearray, int, int], None]) -> bool:
        """One dump, ``each(nlmsg_type, buffer, start, end)`` per message as it arrives (the
        buffer is reused: copy what you keep). False if the kernel says the dump was
        interrupted by concurrent changes (redo it). Raises TimeoutError, OSError."""
        seq = self._next_seq()
        header = NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        self._sock.send(header + body)
        interrupted = False
        buffer = self._buffer
        pid = self._pid
        unpack = NLMSGHDR.unpack_from
        deadline = time.monotonic() + self.timeout
        while True:
            size = self._recv(deadline)
            # messages(), inlined: ~1 ms less for a dump of 10,000 routes.
            offset = 0
            while offset + NLMSGHDR.size <= size:
                length, kind, flags, msg_seq, msg_pid = unpack(buffer, offset)
                if length < NLMSGHDR.size:
                    break  # what follows cannot be framed
                if msg_seq == seq and msg_pid == pid:  # else left over from an earlier request that timed out
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE:
                        return not interrupted
                    if kind == NLMSG_ERROR:
                        code = error_code(buffer, offset + NLMSGHDR.size)
                        if code:
                            raise OSError(code, os.strerror(code))
                    else:
                        each(kind, buffer, offset + NLMSGHDR.size, offset + length)
                offset += (length + 3) & ~3
