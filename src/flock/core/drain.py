"""Drain you can see, the pure part: which conntrack entries are a pod's pinned
connections, and when a pod's drain is over (the ``AnycastDrained`` Event).

Connection pinning (flock.core.pinning) keeps each connection on its pod through next-hop
changes: a pod that leaves the anycast routes (terminating) stops taking new connections
and keeps its established ones until they end or its network goes (CNI DEL). How many it
still has is read from conntrack (flock.adapters.conntrack): the entries whose ct mark
carries the pod's slot within ``datapath.markMask`` and that are live connections
(:func:`counts`). :class:`DrainBook` turns those counts into one Event per drain.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from flock.core.model import ContainerID, PodRef
from flock.core.pinning import slot_mark, slot_of_mark

IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_ESTABLISHED = 3
"""conntrack's TCP state numbers (linux/netfilter/nf_conntrack_tcp.h): NONE 0, SYN_SENT 1,
SYN_RECV 2, ESTABLISHED 3, FIN_WAIT 4, CLOSE_WAIT 5, LAST_ACK 6, TIME_WAIT 7, CLOSE 8."""
IPS_ASSURED = 1 << 2
IPS_DYING = 1 << 9

SlotCounts = Mapping[int, int]
"""slot -> its pinned connections that count (a slot with none may be absent)."""


@dataclasses.dataclass(frozen=True)
class SlotEntries:
    """One dump of a slot's conntrack entries: how many of them :func:`counts`, and what
    deletes each one later (a CNI DEL dumps once, just before the veth goes, and deletes
    after it has answered: one kernel walk of the conntrack table, not two)."""

    slot: int
    open: int
    """The entries that count as open connections."""
    keys: tuple[bytes, ...]
    """Every entry of the slot (counted or not), as the adapter deletes it (opaque here)."""


class ConntrackEntry(NamedTuple):
    """What decides whether one conntrack entry is a live pinned connection."""

    protocol: int  # IPPROTO_TCP, IPPROTO_UDP ...
    tcp_state: int | None  # conntrack's TCP state (TCP only)
    status: int  # IPS_* bits
    timeout: int | None  # seconds left (None: the kernel did not say)
    mark: int


def counts(entry: ConntrackEntry) -> bool:
    """Whether an entry is a connection still in use: TCP in ESTABLISHED (not SYN_*, not
    half-closed or closing: FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE), or a UDP flow
    conntrack calls assured (replies seen, alive for over 2 s: a stream, not one query)
    that has not expired; never an entry being destroyed. Other protocols are not pinned."""
    if entry.status & IPS_DYING or entry.timeout == 0:
        return False
    if entry.protocol == IPPROTO_TCP:
        return entry.tcp_state == TCP_ESTABLISHED
    if entry.protocol == IPPROTO_UDP:
        return bool(entry.status & IPS_ASSURED)
    return False


def count_entries(entries: Iterable[ConntrackEntry], mask: int) -> dict[int, int]:
    """Per slot (of ``mask``), the entries that :func:`counts`; slot 0 (not pinned) is left out."""
    found: dict[int, int] = {}
    for entry in entries:
        if counts(entry):
            slot = slot_of_mark(entry.mark, mask)
            if slot:
                found[slot] = found.get(slot, 0) + 1
    return found


def mark_filters(mask: int) -> list[tuple[int, int]]:
    """(mark, mask) filters whose matches are exactly the marks with a nonzero slot in
    ``mask``, each mark matching one filter: ``ct mark & m == v``.

    A kernel-side conntrack filter is one mark/mask pair, which cannot say "any slot but
    0"; the nonzero slots split by their highest set bit can: filter *i* asks for bit *i*
    of the mask set and every higher bit of the mask clear. So a mask of *w* bits takes
    *w* dumps, each sending only pinned entries, whatever the number of pods.
    """
    filters = []
    bit = mask & -mask
    while bit and bit & mask:
        above = mask & ~(bit - 1)  # this bit and the mask's bits above it
        filters.append((bit, above))
        bit <<= 1
    return filters


def dump_filters(slots: Collection[int], mask: int) -> list[tuple[int, int]]:
    """The fewest (mark, mask) dumps that return every entry of ``slots``: one per slot, or
    the parts of :func:`mark_filters` that hold one of them when those are fewer (slots
    1-10 take 4 dumps: highest bit 0, 1, 2 or 3).

    Each dump makes the kernel walk its whole conntrack hash table (~10 ms at 262,144
    buckets, however few entries match), so the number of dumps is the cost to keep low.
    """
    if not slots:
        return []
    marks = [slot_mark(slot, mask) for slot in sorted(slots)]
    # Only the parts of the partition that hold a wanted slot (those of its highest bits).
    partition = [(mark, m) for mark, m in mark_filters(mask) if any(s & m == mark for s in marks)]
    if len(slots) <= len(partition):
        return [(mark, mask) for mark in marks]
    return partition


def seconds_text(seconds: float) -> str:
    """A short duration for an Event: "0.4s", "34s", "2m05s", "1h02m"."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _connections(count: int) -> str:
    return f"{count} pinned connection{'s' if count != 1 else ''}"


def drained_message(node: str, at_start: int, seconds: float) -> str:
    """The AnycastDrained message of a drain that ended by itself."""
    if at_start == 0:
        return f"drained on {node}: no pinned connection was open when the pod stopped taking new ones"
    return (f"drained on {node}: the last of its pinned connections ended {seconds_text(seconds)} after the pod "
            f"stopped taking new ones ({_connections(at_start)} open then)")


def cut_message(node: str, open_: int) -> str:
    """The AnycastDrained message of a CNI DEL that found pinned connections open."""
    verb = "was" if open_ == 1 else "were"
    return (f"{_connections(open_)} {verb} still open when the pod's network was removed from {node}: "
            f"cut, not drained")


@dataclasses.dataclass(frozen=True)
class PinnedPod:
    """One pinned pod as the drain watch sees it on a scan."""

    container: ContainerID
    pod: PodRef
    slot: int
    terminating: bool
    """The API server marked it for deletion (``deletionTimestamp``)."""
    next_hop: bool
    """A next hop of one of flock's anycast routes (advertised, or withdrawn and still
    forwarding): it may still be given new connections."""


@dataclasses.dataclass(frozen=True)
class DrainNotice:
    """A drain is over: post one AnycastDrained Event, log one line."""

    pod: PodRef
    cut: int
    """Connections still open at CNI DEL (0: the drain ended by itself)."""
    at_start: int
    """Pinned connections when the pod stopped taking new ones (-1: never seen draining)."""
    seconds: float
    """From then until the drain ended (0 when never seen draining)."""

    def message(self, node: str) -> str:
        if self.cut:
            return cut_message(node, self.cut)
        return drained_message(node, max(self.at_start, 0), self.seconds)


@dataclasses.dataclass
class _Drain:
    since: float  # when the pod was first seen terminating and no next hop
    at_start: int
    reported: bool = False


class DrainBook:
    """Which pods are draining, and the one notice each drain gets.

    A pod drains from the first scan that sees it terminating and no longer a next hop of
    any anycast route (advertised or withdrawn-and-lingering: until then new connections
    may still reach it); its drain is over at the first scan that counts 0 pinned
    connections for it (a notice, once), or at its CNI DEL (:meth:`deleted`). A pod that
    becomes a next hop again (a last resort) starts over. Pure: the caller passes the time.
    """

    def __init__(self) -> None:
        self._drains: dict[ContainerID, _Drain] = {}

    def draining(self, container: ContainerID) -> bool:
        """Whether the pod is draining (its drain may be over already)."""
        return container in self._drains

    def forget(self, container: ContainerID) -> None:
        self._drains.pop(container, None)

    def observe(self, pods: Iterable[PinnedPod], counts: SlotCounts, now: float) -> list[DrainNotice]:
        """One scan: the pinned pods and their slots' counts. Returns the drains that ended."""
        notices = []
        seen = set()
        for pod in pods:
            seen.add(pod.container)
            if not pod.terminating or pod.next_hop:
                self._drains.pop(pod.container, None)
                continue
            count = counts.get(pod.slot, 0)
            drain = self._drains.get(pod.container)
            if drain is None:
                drain = self._drains[pod.container] = _Drain(since=now, at_start=count)
            if count == 0 and not drain.reported:
                drain.reported = True
                notices.append(DrainNotice(pod.pod, 0, drain.at_start, now - drain.since))
        for gone in set(self._drains) - seen:
            del self._drains[gone]
        return notices

    def deleted(self, container: ContainerID, pod: PodRef, open_: int, now: float) -> DrainNotice | None:
        """The pod's CNI DEL found ``open_`` pinned connections: the notice to give, if any
        (cut connections always; else the end of a drain not reported yet). Forgets the pod."""
        drain = self._drains.pop(container, None)
        if open_ > 0:
            return DrainNotice(pod, open_, drain.at_start if drain else -1, now - drain.since if drain else 0.0)
        if drain is not None and not drain.reported:
            return DrainNotice(pod, 0, drain.at_start, now - drain.since)
        return None
