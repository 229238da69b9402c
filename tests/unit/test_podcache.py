"""The pod cache: watch events, full re-lists, and which of the two wins."""

from __future__ import annotations

import ipaddress

from flock.core.podcache import PodCache
from tests.unit.factories import pod_body


def test_readiness_and_termination_wake_the_reconciler_and_a_repeat_does_not() -> None:
    cache = PodCache("node-a")
    assert cache.observe(None, pod_body("web-1", ready=False))
    assert cache.observe("MODIFIED", pod_body("web-1", ready=True))
    assert not cache.observe("MODIFIED", pod_body("web-1", ready=True)), "nothing changed"
    assert cache.observe("MODIFIED", pod_body("web-1", ready=True, terminating=True))
    assert cache.snapshot()[("default", "web-1")].reason == "terminating"
    assert cache.observe("DELETED", pod_body("web-1", ready=True, terminating=True))
    assert cache.snapshot() == {}


def test_an_annotation_edit_wakes_the_reconciler() -> None:
    cache = PodCache("node-a")
    cache.observe(None, pod_body("web-1", anycast="198.51.100.10"))
    assert cache.observe("MODIFIED", pod_body("web-1", anycast="198.51.100.10, 198.51.100.11"))
    assert cache.snapshot()[("default", "web-1")].anycast == frozenset(
        {ipaddress.ip_address("198.51.100.10"), ipaddress.ip_address("198.51.100.11")})


def test_pods_of_other_nodes_are_ignored() -> None:
    cache = PodCache("node-a")
    assert not cache.observe(None, pod_body("web-9", node="node-b"))
    assert cache.snapshot() == {}


def test_a_relist_repairs_what_the_watch_missed() -> None:
    cache = PodCache("node-a")
    cache.observe(None, pod_body("gone", ready=True))
    since = cache.watch_serial()
    assert cache.replace_all([pod_body("new", ready=True), pod_body("web-9", node="node-b")], since)
    assert set(cache.snapshot()) == {("default", "new")}


def test_a_relist_answered_before_a_watch_event_does_not_undo_it() -> None:
    # The LIST is sent, then the watch reports web-1 terminating and web-2 deleted, then
    # the LIST's (older) answer arrives: it must not make web-1 eligible or bring web-2 back.
    cache = PodCache("node-a")
    cache.observe(None, pod_body("web-1", ready=True))
    cache.observe(None, pod_body("web-2", ready=True))
    since = cache.watch_serial()
    cache.observe("MODIFIED", pod_body("web-1", ready=True, terminating=True))
    cache.observe("DELETED", pod_body("web-2", ready=True))
    stale = [pod_body("web-1", ready=True), pod_body("web-2", ready=True), pod_body("web-3", ready=True)]
    cache.replace_all(stale, since)
    snapshot = cache.snapshot()
    assert set(snapshot) == {("default", "web-1"), ("default", "web-3")}
    assert snapshot[("default", "web-1")].reason == "terminating"
    # The next re-list is newer than those events: it counts in full.
    since = cache.watch_serial()
    cache.replace_all([pod_body("web-3", ready=True)], since)
    assert set(cache.snapshot()) == {("default", "web-3")}
