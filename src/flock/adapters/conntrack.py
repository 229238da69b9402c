"""Counting pinned connections in the node's conntrack table, through ctnetlink.

Connection pinning (flock.adapters.pinning) writes each pinned connection's pod slot
into its conntrack mark, inside ``datapath.markMask``. How many connections a pod still
has is then a question to conntrack: flock asks it with ``IPCTNL_MSG_CT_GET`` dumps on a
NETLINK_NETFILTER socket, on a thread inside the node's netns (``hostNetns``), never with
the ``conntrack`` executable (a process per pod and per tick, and text to parse).

The kernel filters: each dump carries ``CTA_MARK``/``CTA_MARK_MASK``, so it walks its
table and sends only the entries whose ``ct mark & mask == mark``; the family is
``AF_UNSPEC``, so one dump covers IPv4 and IPv6. Each dump walks the kernel's whole
conntrack hash table (~10 ms at 262,144 buckets, however few entries match), so
:func:`flock.core.drain.dump_filters` picks the fewest: one per slot, or (a single
mark/mask cannot say "any slot but 0") one per highest bit of the wanted slots, at most
one per bit of the mask (8 for the default), each returning only pinned entries. Which entries count
(:func:`flock.core.drain.counts`: ESTABLISHED TCP, assured live UDP) is decided here in
user space, from the few attributes read of each entry: the status-mask filter of newer
kernels (``CTA_STATUS_MASK``, 5.19+) cannot say "ESTABLISHED" anyway.

Cost (bench/conntrack_count.py): the README, *Watching a drain*.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Final, TypeVar

from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.core.drain import ConntrackEntry, SlotCounts, count_entries, counts, dump_filters
from flock.core.pinning import slot_mark, slot_of_mark
from flock.errors import ConntrackError

T = TypeVar("T")

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_CTNETLINK: Final = 1
IPCTNL_MSG_CT_NEW: Final = 0
IPCTNL_MSG_CT_GET: Final = 1
IPCTNL_MSG_CT_DELETE: Final = 2
CT_GET: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
CT_NEW: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_DELETE: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
NFNETLINK_V0: Final = 0

# linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG: Final = 1
CTA_TUPLE_REPLY: Final = 2
CTA_STATUS: Final = 3
CTA_PROTOINFO: Final = 4
CTA_TIMEOUT: Final = 7
CTA_MARK: Final = 8
CTA_ZONE: Final = 18
CTA_MARK_MASK: Final = 21
CTA_TUPLE_IP: Final = 1
CTA_TUPLE_PROTO: Final = 2
CTA_IP_V4_SRC: Final = 1
CTA_IP_V4_DST: Final = 2
CTA_IP_V6_SRC: Final = 3
CTA_IP_V6_DST: Final = 4
CTA_PROTO_NUM: Final = 1
CTA_PROTO_SRC_PORT: Final = 2
CTA_PROTO_DST_PORT: Final = 3
CTA_PROTOINFO_TCP: Final = 1
CTA_PROTOINFO_TCP_STATE: Final = 1
NLA_F_NESTED: Final = 0x8000

# linux/netlink.h
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10

NLMSGHDR: Final = struct.Struct("=IHHII")
NFGENMSG: Final = struct.Struct("=BBH")  # family, version, res_id (big endian, 0)
NLATTR: Final = struct.Struct("=HH")
BE32: Final = struct.Struct(">I")
BE16: Final = struct.Struct(">H")

_RECV_BUFFER: Final = 1 << 20  # far above ctnetlink's dump chunks (one page to 32 KiB)
_DUMP_RETRIES: Final = 5


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + bytes((4 - length % 4) % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def dump_request(mark: int, mask: int) -> bytes:
    """The payload of a CT_GET dump of both families' entries with ``ct mark & mask == mark``."""
    return (NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, 0) + attr(CTA_MARK, BE32.pack(mark))
            + attr(CTA_MARK_MASK, BE32.pack(mask)))


def _attrs(data: bytes | bytearray, start: int, end: int) -> dict[int, tuple[int, int]]:
    spans = {}
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            break
        spans[kind & 0x3FFF] = (start + 4, start + length)
        start += (length + 3) & ~3
    return spans


def _nested_byte(data: bytes | bytearray, start: int, end: int, outer: int, inner: int) -> int | None:
    """The first byte of attribute ``inner`` inside attribute ``outer`` of ``data[start:end]``."""
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            return None
        if kind & 0x3FFF == outer:
            offset, stop = start + 4, start + length
            while offset + 4 <= stop:
                length, kind = unpack(data, offset)
                if length < 4:
                    return None
                if kind & 0x3FFF == inner and length > 4:
                    return data[offset + 4]
                offset += (length + 3) & ~3
            return None
        start += (length + 3) & ~3
    return None


def decode_entry(data: bytes | bytearray, start: int, end: int) -> ConntrackEntry:
    """The parts of one conntrack message (payload ``data[start:end]``) that decide whether
    it counts: (L4 protocol, TCP state or None, status bits, seconds left or None, mark).

    One pass over the top-level attributes, nested ones only where needed and without
    building dicts: a full count decodes every pinned entry (~4 us each)."""
    protocol = 0
    tcp_state = None
    status = 0
    timeout = None
    mark = 0
    unpack = NLATTR.unpack_from
    be32 = BE32.unpack_from
    offset = start + NFGENMSG.size
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind == CTA_STATUS:
            status = be32(data, offset + 4)[0]
        elif kind == CTA_MARK:
            mark = be32(data, offset + 4)[0]
        elif kind == CTA_TIMEOUT:
            timeout = be32(data, offset + 4)[0]
        elif kind == CTA_TUPLE_ORIG:
            protocol = _nested_byte(data, offset + 4, offset + length, CTA_TUPLE_PROTO, CTA_PROTO_NUM) or 0
        elif kind == CTA_PROTOINFO:
            tcp_state = _nested_byte(data, offset + 4, offset + length, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE)
        offset += (length + 3) & ~3
    return ConntrackEntry(protocol, tcp_state, status, timeout, mark)


class CtnlSocket:
    """A NETLINK_NETFILTER socket of the calling thread's netns, for ctnetlink dumps and
    requests. Not thread-safe. ``timeout`` bounds each wait for the kernel."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock.bind((0, 0))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._pid: int = self._sock.getsockname()[0]
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)

    def __enter__(self) -> CtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq % 0xFFFFFFFF) + 1
        return self._seq

    def _recv(self, deadline: float) -> int:
        while True:
            try:
                size = self._sock.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    raise TimeoutError(f"no answer from ctnetlink within {self.timeout} s") from None
                continue
            if size > len(self._buffer):
                raise OSError(errno.EMSGSIZE, f"ctnetlink message of {size} bytes truncated")
            return size

    def dump_once(self, msg_type: int, body: bytes, each: Callable[[bytearray, int, int], None]) -> bool:
        """One dump: ``each(buffer, start, end)`` per message. False if it was interrupted."""
        seq = self._next_seq()
        self._sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                        + body)
        buffer = self._buffer
        pid = self._pid
        unpack = NLMSGHDR.unpack_from
        interrupted = False
        deadline = time.monotonic() + self.timeout
        while True:
            size = self._recv(deadline)
            offset = 0
            while offset + NLMSGHDR.size <= size:
                length, kind, flags, msg_seq, msg_pid = unpack(buffer, offset)
                if length < NLMSGHDR.size:
                    break
                if msg_seq == seq and msg_pid == pid:
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE:
                        return not interrupted
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", buffer, offset + NLMSGHDR.size)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                    else:
                        each(buffer, offset + NLMSGHDR.size, offset + length)
                offset += (length + 3) & ~3

    def transact(self, requests: Sequence[tuple[int, int, bytes]]) -> list[int | None]:
        """Send requests (type, flags, payload) and collect each one's errno (0: done;
        None: no answer in time). For tests and benchmarks that create entries."""
        results: list[int | None] = [None] * len(requests)
        for first in range(0, len(requests), 256):
            waiting: dict[int, int] = {}
            parts = []
            for index in range(first, min(first + 256, len(requests))):
                kind, flags, payload = requests[index]
                seq = self._next_seq()
                waiting[seq] = index
                parts.append(NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                                           seq, 0) + payload)
            self._sock.send(b"".join(parts))
            deadline = time.monotonic() + self.timeout
            while waiting:
                try:
                    size = self._recv(deadline)
                except TimeoutError:
                    return results
                offset = 0
                while offset + NLMSGHDR.size <= size:
                    length, kind, _flags, seq, pid = NLMSGHDR.unpack_from(self._buffer, offset)
                    if length < NLMSGHDR.size:
                        break
                    if kind == NLMSG_ERROR and pid == self._pid and seq in waiting:
                        results[waiting.pop(seq)] = -struct.unpack_from("=i", self._buffer,
                                                                        offset + NLMSGHDR.size)[0]
                    offset += (length + 3) & ~3
        return results


def _dump(sock: CtnlSocket, mark: int, mask: int, each: Callable[[bytearray, int, int], None],
          restart: Callable[[], None]) -> None:
    """One filtered dump, redone (after ``restart()``) while the kernel says it was interrupted."""
    for _ in range(_DUMP_RETRIES):
        if sock.dump_once(CT_GET, dump_request(mark, mask), each):
            return
        restart()
    raise OSError(errno.EINTR, f"conntrack dump interrupted {_DUMP_RETRIES} times")


def _decode_into(entries: list[ConntrackEntry], buffer: bytearray, start: int, end: int) -> None:
    entries.append(decode_entry(buffer, start, end))


def count_pinned(mask: int, timeout: float, filters: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Per slot, the pinned connections that count (:func:`flock.core.drain.counts`) among
    the entries the (mark, mask) ``filters`` select, in this thread's netns. Raises OSError,
    TimeoutError."""
    found: dict[int, int] = {}
    with CtnlSocket(timeout) as sock:
        for mark, filter_mask in filters:
            entries: list[ConntrackEntry] = []
            _dump(sock, mark, filter_mask, functools.partial(_decode_into, entries), entries.clear)
            for slot, number in count_entries(entries, mask).items():
                found[slot] = found.get(slot, 0) + number
    return found


def forget_slot(slot: int, mask: int, timeout: float) -> int:
    """Delete every conntrack entry whose mark carries ``slot`` (by its original tuple, one
    request each: never a flush, which an old kernel might not filter). Returns how many
    of them counted as open connections. Raises OSError, TimeoutError."""
    mark = slot_mark(slot, mask)
    doomed: list[bytes] = []
    open_ = 0

    def each(buffer: bytearray, start: int, end: int) -> None:
        nonlocal open_
        entry = decode_entry(buffer, start, end)
        if slot_of_mark(entry.mark, mask) != slot:  # the kernel filters; this only makes sure
            return
        open_ += counts(entry)
        family = buffer[start]
        attrs = _attrs(buffer, start + NFGENMSG.size, end)
        if CTA_TUPLE_ORIG not in attrs:
            return
        body = NFGENMSG.pack(family, NFNETLINK_V0, 0)
        for kind in (CTA_TUPLE_ORIG, CTA_ZONE):
            if kind in attrs:
                value_start, value_end = attrs[kind]
                body += buffer[value_start - NLATTR.size:value_end] + bytes((4 - (value_end - value_start) % 4) % 4)
        doomed.append(bytes(body))

    def restart() -> None:
        nonlocal open_
        doomed.clear()
        open_ = 0

    with CtnlSocket(timeout) as sock:
        _dump(sock, mark, mask, each, restart)
        if doomed:
            sock.transact([(CT_DELETE, 0, body) for body in doomed])  # ENOENT: it ended meanwhile
    return open_


class ConntrackCounter:
    """The node's pinned connections per slot (a :class:`flock.core.ports.PinnedConnections`),
    read in its netns (``hostNetns`` when set)."""

    def __init__(self, *, mask: int, host_netns: str | None, timeout: float = 10.0) -> None:
        self.mask = mask
        self.path = named_netns(host_netns) if host_netns else None
        self.timeout = timeout

    async def count(self, slots: Collection[int]) -> SlotCounts:
        """Per slot of ``slots``, its pinned connections now (a slot with none is absent).
        The fewest dumps (:func:`flock.core.drain.dump_filters`). Raises ConntrackError."""
        if not slots:
            return {}
        wanted = set(slots)
        found = await self._run("count pinned connections", count_pinned, self.mask, self.timeout,
                                dump_filters(wanted, self.mask))
        return {slot: number for slot, number in found.items() if slot in wanted}

    async def forget(self, slot: int) -> int:
        """Delete the slot's entries; how many counted as open connections. Raises ConntrackError."""
        return await self._run(f"forget slot {slot}'s connections", forget_slot, slot, self.mask, self.timeout)

    async def _run(self, what: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return await in_netns(self.path, self.timeout * 2 + 5, func, *args)
        except (OSError, TimeoutError) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ConntrackError(f"{what} (ctnetlink): {detail}") from exc
