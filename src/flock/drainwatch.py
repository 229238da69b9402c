"""Drain you can see: each pinned pod's open connections as a metric, and one
``AnycastDrained`` Event on the Pod when its drain is over.

A terminating pod leaves the anycast routes and so stops taking new connections; with
connection pinning its established ones keep reaching it until they end or its network
goes (CNI DEL). This task counts them in the node's conntrack table
(:class:`~flock.core.ports.PinnedConnections`, ctnetlink dumps filtered by the slot's
mark), sets ``flock_pinned_connections{namespace,pod}`` and, through
:class:`~flock.core.drain.DrainBook`, posts once per drain either "drained" (a
terminating pod's last pinned connection ended) or, at its CNI DEL, how many were still
open and got cut.

How often: a count costs one kernel walk of the whole conntrack hash table per dump
(~10 ms at 262,144 buckets, whatever matches) plus ~5 µs per pinned entry sent. So the
task looks every ``tickSeconds`` but counts then only the slots of terminating pods
(one dump each: a rolling restart has a few at a time), and every pinned pod's slots
every :data:`FULL_SECONDS` and when a pod was pinned since the last such count (at most
one dump per bit of ``markMask``: 8 by default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection

from flock.core.drain import DrainBook, DrainNotice, PinnedPod, SlotEntries
from flock.core.model import Allocation, AllocationState, ContainerID, Event, ObjectRef, PodRef
from flock.core.podcache import PodCache
from flock.core.ports import Allocations, EventSink, PinnedConnections
from flock.core.resolver import matching_status
from flock.core.settings import AgentConfig
from flock.errors import ConntrackError
from flock.metrics import Metrics

logger = logging.getLogger(__name__)

FULL_SECONDS = 30.0
"""Every pinned pod's connections are counted this often (terminating pods' every tick)."""


class DrainWatch:
    """The drain task and the CNI DEL's report (a :class:`~flock.core.ports.DrainReport`)."""

    def __init__(self, *, config: AgentConfig, store: Allocations, pods: PodCache,
                 next_hop_devs: Callable[[], Collection[str]], connections: PinnedConnections,
                 events: EventSink, metrics: Metrics, full_seconds: float = FULL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.pods = pods
        self.next_hop_devs = next_hop_devs
        """The veths that are next hops of flock's routes, advertised or withdrawn (still forwarding)."""
        self.connections = connections
        self.events = events
        self.metrics = metrics
        self.full_seconds = full_seconds
        self.clock = clock
        self.book = DrainBook()
        self.scans = 0
        self._last_full = -math.inf
        self._counted: frozenset[ContainerID] = frozenset()  # the pinned pods of the last full count
        self._series: set[tuple[str, str]] = set()  # (namespace, pod) of flock_pinned_connections
        self._removed: set[ContainerID] = set()  # DEL reported: not counted any more
        self._failing = False

    async def run(self) -> None:
        """Forever: a look every tick (cancel to stop)."""
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:  # the metric and Events are auxiliary: never stop for them
                logger.exception("counting pinned connections failed unexpectedly")
            await asyncio.sleep(self.config.tick_seconds)

    def pinned(self) -> list[PinnedPod]:
        """The node's pinned pods now (committed, with a slot, no DEL reported)."""
        statuses = self.pods.snapshot()
        devs = self.next_hop_devs()
        found = []
        for allocation in self.store.all():
            if (allocation.pin_slot is None or allocation.state is not AllocationState.COMMITTED
                    or allocation.container_id in self._removed):
                continue
            status = matching_status(allocation, statuses)
            # A pod gone from the API while it drained is still draining (until its DEL).
            terminating = (status.reason == "terminating" if status is not None
                           else self.book.draining(allocation.container_id))
            found.append(PinnedPod(allocation.container_id, allocation.pod, allocation.pin_slot, terminating,
                                   allocation.host_ifname in devs))
        return found

    async def scan(self, *, full: bool | None = None) -> None:
        """Count what is due (``full``: every pinned pod; default: when FULL_SECONDS are
        over, else the terminating pods only), set the metric, post drains that ended."""
        pinned = self.pinned()
        now = self.clock()
        containers = frozenset(p.container for p in pinned)
        if full is None:  # also at once when a pod was pinned (its series appears within a tick)
            full = now - self._last_full >= self.full_seconds or not containers <= self._counted
        chosen = pinned if full else [p for p in pinned if p.terminating]
        if full:
            self._last_full = now
            self._counted = containers
        if not chosen:
            if full:
                self._set_series({})
            return
        started = time.monotonic()
        try:
            counts = await self.connections.count({p.slot for p in chosen})
        except ConntrackError as exc:
            self.metrics.conntrack_errors.inc()
            if not self._failing:
                logger.warning("cannot count pinned connections; flock_pinned_connections is stale and drains "
                               "are not reported until this works again (retried every %gs): %s",
                               self.config.tick_seconds, exc)
            self._failing = True
            return
        self.metrics.conntrack_count_seconds.observe(time.monotonic() - started)
        if self._failing:
            logger.info("counting pinned connections works again")
            self._failing = False
        self.scans += 1
        # A DEL may have reported a pod while the count ran: it is not counted again.
        current = {p.container for p in self.pinned()}
        chosen = [p for p in chosen if p.container in current]
        per_pod: dict[tuple[str, str], int] = {}
        for pod in chosen:
            key = (pod.pod.namespace, pod.pod.name)
            per_pod[key] = per_pod.get(key, 0) + counts.get(pod.slot, 0)
        if full:
            self._set_series(per_pod)
        else:
            for key, number in per_pod.items():
                self._set(key, number)
        for notice in self.book.observe(chosen, counts, self.clock()):
            self._report(notice)
        live = {a.container_id for a in self.store.all()}
        self._removed &= live

    async def network_removing(self, allocation: Allocation) -> SlotEntries | None:
        """CNI DEL, just before the pod's veth goes: one dump of its slot's conntrack entries,
        whose open connections it reports (cut) or the end of its drain, once; its series goes.
        Returns the entries, for :meth:`network_removed` to delete once the DEL has answered;
        None when they must be looked up again then (the dump failed, or the pod is still a
        next hop, so connections may be marked with its slot until the veth is gone). Never raises.

        Counted now, not after: once the veth is gone a client's next packet meets another
        pod, whose reset closes the connection in conntrack (measured: 12 of 12 open
        connections no longer counted 50 ms after the veth went)."""
        if allocation.pin_slot is None or allocation.state is AllocationState.PENDING:
            return None
        self._removed.add(allocation.container_id)
        still_a_next_hop = allocation.host_ifname in self.next_hop_devs()
        try:
            entries = await self.connections.snapshot(allocation.pin_slot)
        except ConntrackError as exc:
            logger.warning("cannot count the pinned connections a DEL cuts pod=%s slot=%d: %s", allocation.pod,
                           allocation.pin_slot, exc)
            self.book.forget(allocation.container_id)
            self._drop_series(allocation)
            return None
        notice = self.book.deleted(allocation.container_id, allocation.pod, entries.open, self.clock())
        if notice is not None:
            self._report(notice)
        self._drop_series(allocation)
        return None if still_a_next_hop else entries

    async def network_removed(self, allocation: Allocation, entries: SlotEntries | None) -> None:
        """After CNI DEL answered, once the pod's veth and pin are gone: delete its slot's
        conntrack entries (``entries``, as :meth:`network_removing` found them; None: all the
        slot has now, one more dump), so a pod given the slot later starts with none. Never raises."""
        if allocation.pin_slot is None or allocation.state is AllocationState.PENDING:
            return
        self._removed.add(allocation.container_id)
        self.book.forget(allocation.container_id)
        try:
            if entries is not None and entries.slot == allocation.pin_slot:
                await self.connections.delete(entries)
            else:
                await self.connections.forget(allocation.pin_slot)
        except ConntrackError as exc:
            logger.warning("cannot delete the conntrack entries of a removed pod pod=%s slot=%d: %s",
                           allocation.pod, allocation.pin_slot, exc)
        self._drop_series(allocation)

    def _drop_series(self, allocation: Allocation) -> None:
        """The pod's series goes, unless another of its containers is still pinned (a sandbox recreated)."""
        others = any(a.pod == allocation.pod and a.pin_slot is not None and a.container_id not in self._removed
                     and a.state is AllocationState.COMMITTED for a in self.store.all())
        if not others:
            self._drop((allocation.pod.namespace, allocation.pod.name))

    def _report(self, notice: DrainNotice) -> None:
        pod: PodRef = notice.pod
        if notice.cut:
            logger.info("pinned connections cut pod=%s open=%d", pod, notice.cut)
        else:
            logger.info("pod drained pod=%s connections_at_start=%d seconds=%.1f", pod, max(notice.at_start, 0),
                        notice.seconds)
        if not pod.name:  # a recovered veth whose pod is unknown: no object to tell
            return
        self.events.post(Event(ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid),
                               "Normal", "AnycastDrained", notice.message(self.config.node_name)))

    def _set(self, key: tuple[str, str], number: int) -> None:
        if not key[1]:
            return
        self.metrics.pinned_connections.labels(namespace=key[0], pod=key[1]).set(number)
        self._series.add(key)

    def _drop(self, key: tuple[str, str]) -> None:
        if key in self._series:
            self._series.discard(key)
            self.metrics.pinned_connections.remove(*key)

    def _set_series(self, per_pod: dict[tuple[str, str], int]) -> None:
        """Exactly these series: the node's pinned pods (bounded by its pods, at most the slots)."""
        for key in self._series - set(per_pod):
            self._drop(key)
        for key, number in per_pod.items():
            self._set(key, number)
