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

A CNI DEL walks the table once for its pod: :func:`snapshot_slot` counts the slot's open
connections and keeps each entry's delete request (its original tuple and zone), just
before the veth goes; :func:`delete_entries` deletes them after the DEL has answered,
without a second walk.

Cost (bench/conntrack_count.py): the README, *Watching a drain*.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Final, TypeVar

from flock.adapters import rtnetlink as rtnl
from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.core.drain import ConntrackEntry, SlotCounts, SlotEntries, count_entries, counts, dump_filters
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

NFGENMSG: Final = struct.Struct("=BBH")  # family, version, res_id (big endian, 0)
NLATTR: Final = struct.Struct("=HH")
BE32: Final = struct.Struct(">I")
BE16: Final = struct.Struct(">H")

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


def ctnl_socket(timeout: float) -> rtnl.RtnlSocket:
    """A NETLINK_NETFILTER socket (ctnetlink) of the calling thread's netns: the route
    adapter's socket on another netlink family (same framing, acks and dumps)."""
    return rtnl.RtnlSocket(timeout, family=NETLINK_NETFILTER)


def _dump(sock: rtnl.RtnlSocket, mark: int, mask: int, each: Callable[[bytearray, int, int], None],
          restart: Callable[[], None]) -> None:
    """One filtered dump, redone (after ``restart()``) while the kernel says it was interrupted."""
    def entry(_kind: int, buffer: bytearray, start: int, end: int) -> None:
        each(buffer, start, end)

    for _ in range(_DUMP_RETRIES):
        if sock.dump_each(CT_GET, dump_request(mark, mask), entry):
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
    with ctnl_socket(timeout) as sock:
        for mark, filter_mask in filters:
            entries: list[ConntrackEntry] = []
            _dump(sock, mark, filter_mask, functools.partial(_decode_into, entries), entries.clear)
            for slot, number in count_entries(entries, mask).items():
                found[slot] = found.get(slot, 0) + number
    return found


def snapshot_slot(slot: int, mask: int, timeout: float) -> SlotEntries:
    """One dump of the entries whose mark carries ``slot``: how many count as open
    connections, and each entry's delete request (its original tuple and zone), for
    :func:`delete_entries`. Raises OSError, TimeoutError."""
    mark = slot_mark(slot, mask)
    keys: list[bytes] = []
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
        keys.append(bytes(body))

    def restart() -> None:
        nonlocal open_
        keys.clear()
        open_ = 0

    with ctnl_socket(timeout) as sock:
        _dump(sock, mark, mask, each, restart)
    return SlotEntries(slot, open_, tuple(keys))


def delete_entries(keys: Sequence[bytes], timeout: float) -> None:
    """Delete conntrack entries by the requests :func:`snapshot_slot` made (one each: never
    a flush, which an old kernel might not filter). An entry gone meanwhile (ENOENT) is
    fine. Raises OSError, TimeoutError."""
    if not keys:
        return
    with ctnl_socket(timeout) as sock:
        sock.transact([(CT_DELETE, 0, body) for body in keys])  # ENOENT: it ended meanwhile


def forget_slot(slot: int, mask: int, timeout: float) -> int:
    """Delete every conntrack entry whose mark carries ``slot`` (one dump, then one delete
    each). Returns how many of them counted as open connections. Raises OSError, TimeoutError."""
    found = snapshot_slot(slot, mask, timeout)
    delete_entries(found.keys, timeout)
    return found.open


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

    async def snapshot(self, slot: int) -> SlotEntries:
        """The slot's entries now, counted, with what deletes them (one dump). Raises ConntrackError."""
        return await self._run(f"list slot {slot}'s connections", snapshot_slot, slot, self.mask, self.timeout)

    async def delete(self, entries: SlotEntries) -> None:
        """Delete the entries of a :meth:`snapshot` (no dump). Raises ConntrackError."""
        if entries.keys:
            await self._run(f"delete slot {entries.slot}'s {len(entries.keys)} conntrack entries", delete_entries,
                            entries.keys, self.timeout)

    async def forget(self, slot: int) -> int:
        """Delete the slot's entries; how many counted as open connections. Raises ConntrackError."""
        return await self._run(f"forget slot {slot}'s connections", forget_slot, slot, self.mask, self.timeout)

    async def _run(self, what: str, func: Callable[..., T], *args: Any) -> T:
        try:
            return await in_netns(self.path, self.timeout * 2 + 5, func, *args)
        except (OSError, TimeoutError) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ConntrackError(f"{what} (ctnetlink): {detail}") from exc
