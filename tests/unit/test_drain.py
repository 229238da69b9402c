"""Drain you can see, the pure parts and the drain watch over fakes: which conntrack
entries count, the kernel filters, the AnycastDrained wording and its once-only rule,
and flock_pinned_connections' series."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from flock.adapters.store import AllocationStore
from flock.core.drain import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPS_ASSURED,
    IPS_DYING,
    ConntrackEntry,
    DrainBook,
    PinnedPod,
    count_entries,
    counts,
    cut_message,
    drained_message,
    dump_filters,
    mark_filters,
    seconds_text,
)
from flock.core.model import ContainerID, PodRef
from flock.core.pinning import DEFAULT_MARK_MASK, slot_count, slot_mark, slot_of_mark
from flock.core.podcache import PodCache
from flock.drainwatch import DrainWatch
from flock.metrics import Metrics
from flock.testing import FakeConnections, RecordingEvents
from tests.support.config import agent_config
from tests.unit.factories import alloc, pod_body

M = DEFAULT_MARK_MASK
TCP_STATES = {"NONE": 0, "SYN_SENT": 1, "SYN_RECV": 2, "ESTABLISHED": 3, "FIN_WAIT": 4, "CLOSE_WAIT": 5,
              "LAST_ACK": 6, "TIME_WAIT": 7, "CLOSE": 8, "SYN_SENT2": 9}


def tcp(state: str, *, mark: int = slot_mark(1, M), status: int = IPS_ASSURED,
        timeout: int | None = 100) -> ConntrackEntry:
    return ConntrackEntry(IPPROTO_TCP, TCP_STATES[state], status, timeout, mark)


def udp(*, assured: bool = True, mark: int = slot_mark(1, M), timeout: int | None = 100) -> ConntrackEntry:
    return ConntrackEntry(IPPROTO_UDP, None, IPS_ASSURED if assured else 0, timeout, mark)


# --- which entries count -------------------------------------------------------------------

@pytest.mark.parametrize("state", sorted(TCP_STATES))
def test_only_established_tcp_counts(state: str) -> None:
    assert counts(tcp(state)) is (state == "ESTABLISHED")


def test_udp_counts_when_assured_and_alive() -> None:
    assert counts(udp())
    assert not counts(udp(assured=False)), "one query and its answer is not a connection"
    assert not counts(udp(timeout=0)), "expired"


def test_dying_expired_and_other_protocols_do_not_count() -> None:
    assert not counts(tcp("ESTABLISHED", status=IPS_ASSURED | IPS_DYING))
    assert not counts(tcp("ESTABLISHED", timeout=0))
    assert counts(tcp("ESTABLISHED", timeout=None)), "no timeout given: alive"
    assert not counts(ConntrackEntry(1, None, IPS_ASSURED, 30, slot_mark(1, M)))  # ICMP


def test_entries_are_counted_per_slot_whatever_the_other_bits() -> None:
    entries = [tcp("ESTABLISHED", mark=slot_mark(1, M)), tcp("ESTABLISHED", mark=slot_mark(1, M) | 0x4000),
               udp(mark=slot_mark(7, M) | 0x8000 | 0x1), tcp("TIME_WAIT", mark=slot_mark(7, M)),
               tcp("ESTABLISHED", mark=0x4000),  # not pinned: slot 0
               tcp("ESTABLISHED", mark=slot_mark(255, M))]
    assert count_entries(entries, M) == {1: 2, 7: 1, 255: 1}


# --- the kernel's filters --------------------------------------------------------------------

@pytest.mark.parametrize("mask", [DEFAULT_MARK_MASK, 0x0000F000 << 4, 0x0FFF0000, 0x000000F0])
def test_mark_filters_match_every_pinned_mark_once_and_never_slot_0(mask: int) -> None:
    filters = mark_filters(mask)
    assert len(filters) == bin(mask).count("1")
    for slot in range(slot_count(mask) + 1):
        for other in (0, 0x4000 & ~mask, 0xFFFFFFFF & ~mask):
            mark = slot_mark(slot, mask) | other
            matching = [f for f in filters if mark & f[1] == f[0]]
            assert len(matching) == (1 if slot else 0), (hex(mark), matching)
            assert slot_of_mark(mark, mask) == slot


def test_dump_filters_take_the_fewest_dumps() -> None:
    assert dump_filters([], M) == []
    assert dump_filters([3, 1], M) == [(slot_mark(1, M), M), (slot_mark(3, M), M)]
    assert dump_filters([1, 2, 3], M) == mark_filters(M)[:2], "2 and 3 share a highest bit"
    assert dump_filters([2, 3], M) == [mark_filters(M)[1]]
    assert dump_filters([2, 4], M) == [(slot_mark(2, M), M), (slot_mark(4, M), M)], "as many: per slot"
    assert dump_filters(range(1, 11), M) == mark_filters(M)[:4], "slots 1-10: highest bit 0, 1, 2 or 3"
    assert dump_filters([1, 40, 41, 42, 200], M) == [mark_filters(M)[i] for i in (0, 5, 7)]
    assert dump_filters(range(1, 256), M) == mark_filters(M), "at most one dump per bit of the mask"
    for slots in ([1, 40, 41, 42, 200], range(1, 11), [7, 8]):  # every wanted slot in exactly one dump
        for slot in slots:
            mark = slot_mark(slot, M) | 0x4000
            assert len([f for f in dump_filters(slots, M) if mark & f[1] == f[0]]) == 1, (slots, slot)


# --- wording --------------------------------------------------------------------------------

def test_durations_read_well() -> None:
    assert [seconds_text(s) for s in (0.04, 3.26, 34.4, 125, 3725)] == ["0.0s", "3.3s", "34s", "2m05s", "1h02m"]


def test_event_messages() -> None:
    assert drained_message("node-a", 12, 34.2) == (
        "drained on node-a: the last of its pinned connections ended 34s after the pod stopped taking new ones "
        "(12 pinned connections open then)")
    assert drained_message("node-a", 1, 2).endswith("(1 pinned connection open then)")
    assert drained_message("node-a", 0, 0) == (
        "drained on node-a: no pinned connection was open when the pod stopped taking new ones")
    assert cut_message("node-a", 3) == (
        "3 pinned connections were still open when the pod's network was removed from node-a: cut, not drained")
    assert cut_message("node-a", 1).startswith("1 pinned connection was still open")


# --- once per drain ----------------------------------------------------------------------------

WEB = PodRef("default", "web-0", "uid-web-0")
C = ContainerID("c-web-0")


def pinned(*, terminating: bool = True, next_hop: bool = False, slot: int = 4) -> PinnedPod:
    return PinnedPod(C, WEB, slot, terminating, next_hop)


def test_a_drain_is_reported_once_when_the_last_connection_ends() -> None:
    book = DrainBook()
    assert book.observe([pinned(terminating=False, next_hop=True)], {4: 5}, 0.0) == []
    assert book.observe([pinned(next_hop=True)], {4: 5}, 1.0) == [], "still a next hop: new connections may come"
    assert book.observe([pinned()], {4: 3}, 2.0) == []
    assert book.observe([pinned()], {4: 1}, 4.0) == []
    [notice] = book.observe([pinned()], {}, 9.5)
    assert (notice.pod, notice.cut, notice.at_start, notice.seconds) == (WEB, 0, 3, 7.5)
    assert "ended 7.5s after" in notice.message("node-a")
    assert book.observe([pinned()], {}, 11.0) == [], "once"
    assert book.deleted(C, WEB, 0, 12.0) is None, "the DEL after a reported drain says nothing more"


def test_a_pod_with_nothing_open_is_drained_at_once() -> None:
    book = DrainBook()
    [notice] = book.observe([pinned()], {}, 5.0)
    assert notice.message("node-a") == drained_message("node-a", 0, 0)


def test_a_last_resort_pod_drains_only_once_it_is_no_next_hop() -> None:
    book = DrainBook()
    assert book.observe([pinned(next_hop=True)], {}, 0.0) == []
    [notice] = book.observe([pinned()], {}, 1.0)
    assert notice.at_start == 0
    # It becomes the last resort again (no replica left): a new drain, reported again.
    assert book.observe([pinned(next_hop=True)], {4: 2}, 2.0) == []
    assert book.observe([pinned()], {4: 2}, 3.0) == []
    [again] = book.observe([pinned()], {}, 5.0)
    assert (again.at_start, again.seconds) == (2, 2.0)


def test_del_reports_cut_connections_or_an_unreported_drain() -> None:
    book = DrainBook()
    book.observe([pinned()], {4: 3}, 0.0)
    cut = book.deleted(C, WEB, 3, 30.0)
    assert cut is not None and cut.cut == 3 and cut.message("node-a").startswith("3 pinned connections were")
    assert book.deleted(C, WEB, 0, 31.0) is None, "forgotten"
    # Deleted without terminating first (a force delete, a sandbox recreated): cut ones only.
    assert book.deleted(C, WEB, 0, 0.0) is None
    assert book.deleted(C, WEB, 2, 0.0) is not None
    # Draining, its last connection ended between two scans, then the DEL: drained.
    book.observe([pinned()], {4: 1}, 0.0)
    drained = book.deleted(C, WEB, 0, 1.5)
    assert drained is not None and drained.cut == 0 and drained.at_start == 1 and drained.seconds == 1.5


def test_pods_that_leave_are_forgotten() -> None:
    book = DrainBook()
    book.observe([pinned()], {4: 3}, 0.0)
    assert book.draining(C)
    book.observe([], {}, 1.0)
    assert not book.draining(C)


# --- the drain watch over fakes ------------------------------------------------------------------

@dataclasses.dataclass
class Watch:
    watch: DrainWatch
    store: AllocationStore
    pods: PodCache
    connections: FakeConnections
    events: RecordingEvents
    metrics: Metrics
    next_hops: set[str]

    def series(self) -> dict[str, float]:
        text = self.metrics.exposition().decode()
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^flock_pinned_connections\{namespace="default",pod="([^"]+)"\} (\S+)$', text, re.M)}

    def drained(self) -> list[str]:
        return [f"{e.involved.name}: {e.message}" for e in self.events.events if e.reason == "AnycastDrained"]


@pytest.fixture
async def watch(tmp_path: pathlib.Path) -> Watch:
    store = AllocationStore(tmp_path)
    pods = PodCache("node-a", "ready-and-not-terminating", 64)
    connections = FakeConnections()
    events = RecordingEvents()
    metrics = Metrics()
    next_hops: set[str] = set()
    drain = DrainWatch(config=agent_config(), store=store, pods=pods, next_hop_devs=lambda: next_hops,
                       connections=connections, events=events, metrics=metrics, clock=lambda: 100.0)
    return Watch(drain, store, pods, connections, events, metrics, next_hops)


async def _pod(w: Watch, name: str, slot: int | None, *, terminating: bool = False) -> None:
    record = dataclasses.replace(alloc(name, uid=f"uid-{name}", dev=f"flock{name[-1]:0>8}"), pin_slot=slot)
    await w.store.put(record)
    w.pods.observe("ADDED", pod_body(name, terminating=terminating, anycast="198.51.100.10"))
    w.next_hops.add(record.host_ifname)


async def test_the_metric_has_a_series_per_pinned_pod_and_loses_those_of_pods_gone(watch: Watch) -> None:
    w = watch
    await _pod(w, "web-1", 1)
    await _pod(w, "web-2", 2)
    await _pod(w, "plain-3", None)  # not pinned: no series
    w.connections.open = {1: 4, 9: 7}  # slot 9: another pod's, gone
    await w.watch.scan()
    assert w.series() == {"web-1": 4.0, "web-2": 0.0}
    # Between full scans only terminating pods are counted, and nothing when there is none.
    await w.watch.scan()
    assert w.connections.counted == [frozenset({1, 2})]
    await w.store.remove(ContainerID("c-default-web-2"))
    await w.watch.scan(full=True)
    assert w.series() == {"web-1": 4.0}


async def test_a_terminating_pod_is_counted_every_tick_and_its_drain_posted_once(watch: Watch) -> None:
    w = watch
    await _pod(w, "web-1", 1)
    await _pod(w, "web-2", 2)
    w.connections.open = {1: 2, 2: 5}
    await w.watch.scan(full=True)
    w.pods.observe("MODIFIED", pod_body("web-1", terminating=True, anycast="198.51.100.10"))
    await w.watch.scan()  # still a next hop until a pass takes it out
    assert w.connections.counted[-1] == {1} and w.drained() == []
    w.next_hops.discard("flock0000000" + "1")
    await w.watch.scan()
    w.connections.open[1] = 1
    await w.watch.scan()
    assert w.series()["web-1"] == 1.0 and w.drained() == []
    del w.connections.open[1]
    for _ in range(3):
        await w.watch.scan()
    assert w.drained() == ["web-1: " + drained_message("node-a", 2, 0)]
    assert w.series() == {"web-1": 0.0, "web-2": 5.0}
    # Its DEL: nothing more to say; its series goes, its slot's entries are forgotten.
    record = w.store.get(ContainerID("c-default-web-1"))
    assert record is not None
    entries = await w.watch.network_removing(record)
    assert entries is not None and entries.slot == 1
    await w.watch.network_removed(record, entries)
    assert len(w.drained()) == 1 and w.connections.forgotten == [1]
    assert w.series() == {"web-2": 5.0}


async def test_del_with_open_connections_says_how_many_were_cut(watch: Watch) -> None:
    w = watch
    await _pod(w, "web-2", 2)
    w.connections.open = {2: 3}
    await w.watch.scan()
    record = w.store.get(ContainerID("c-default-web-2"))
    assert record is not None
    w.next_hops.clear()  # a pass took it out of the route before its veth goes
    dumps = len(w.connections.counted)
    entries = await w.watch.network_removing(record)
    # The Event is said at once, from the one dump whose entries are deleted later.
    assert w.drained() == ["web-2: " + cut_message("node-a", 3)]
    assert w.series() == {}
    assert entries is not None and entries.open == 3 and len(entries.keys) == 3
    await w.watch.network_removed(record, entries)
    assert len(w.connections.counted) == dumps + 1 and w.connections.forgotten == [2]
    assert w.drained() == ["web-2: " + cut_message("node-a", 3)]
    await w.watch.scan(full=True)  # the record is still there (the DEL removes it next): not counted again
    assert w.series() == {} and len(w.drained()) == 1


async def test_a_del_of_a_pod_still_a_next_hop_looks_its_entries_up_again_after(watch: Watch) -> None:
    """Still a next hop when its DEL counts (a last resort, a lone replica force-deleted): new
    connections may be marked with its slot until the veth goes, so its entries are dumped
    again, after the DEL answered, rather than taken from the count."""
    w = watch
    await _pod(w, "web-3", 3)
    w.connections.open = {3: 2}
    record = w.store.get(ContainerID("c-default-web-3"))
    assert record is not None
    assert await w.watch.network_removing(record) is None
    assert w.drained() == ["web-3: " + cut_message("node-a", 2)]
    w.connections.open = {3: 3}  # one more came in before the veth went
    await w.watch.network_removed(record, None)
    assert w.connections.forgotten == [3] and w.connections.open == {}
    assert len(w.drained()) == 1


async def test_conntrack_failures_are_logged_once_and_change_nothing(watch: Watch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    w = watch
    await _pod(w, "web-1", 1, terminating=True)
    w.connections.fail = True
    for _ in range(3):
        await w.watch.scan()
    assert caplog.text.count("cannot count pinned connections") == 1
    assert w.drained() == [] and w.series() == {}
    record = w.store.get(ContainerID("c-default-web-1"))
    assert record is not None
    assert await w.watch.network_removing(record) is None  # never raises; the entries are looked up again
    await w.watch.network_removed(record, None)  # never raises
    assert w.drained() == []
    w.connections.fail = False
    await w.watch.scan()
    assert "works again" in caplog.text
