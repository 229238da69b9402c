"""The Event limiter: per-object rate, repeats counted, bounded memory (kubelet's correlator)."""

from __future__ import annotations

from flock.core.eventlimit import EventLimiter, Verdict


def test_an_object_gets_its_burst_then_one_event_per_refill_and_others_are_unaffected() -> None:
    now = [0.0]
    limiter = EventLimiter(burst=25, refill_seconds=300, clock=lambda: now[0])
    verdicts = [limiter.judge("pod-a", f"event {i}")[0] for i in range(10_000)]
    assert verdicts.count(Verdict.POST) == 25 and verdicts.count(Verdict.DROP) == 10_000 - 25
    assert limiter.judge("pod-a", "more") == (Verdict.DROP, 10_000 - 25 + 1)  # dropped in a row
    assert limiter.judge("pod-b", "event 0") == (Verdict.POST, 1), "another object has its own bucket"
    now[0] = 299.0
    assert limiter.judge("pod-a", "later")[0] is Verdict.DROP
    now[0] = 301.0
    assert limiter.judge("pod-a", "later") == (Verdict.POST, 1)
    assert limiter.judge("pod-a", "later again")[0] is Verdict.DROP


def test_an_identical_event_within_the_window_raises_the_count_instead() -> None:
    now = [0.0]
    limiter = EventLimiter(repeat_seconds=600, clock=lambda: now[0])
    assert limiter.judge("pod", "withdrawn") == (Verdict.POST, 1)
    assert limiter.judge("pod", "advertised") == (Verdict.POST, 1)
    assert limiter.judge("pod", "withdrawn") == (Verdict.REPEAT, 2)
    assert limiter.judge("pod", "withdrawn") == (Verdict.REPEAT, 3)
    now[0] = 601.0
    assert limiter.judge("pod", "withdrawn") == (Verdict.POST, 1), "an old Event is not counted on"
    limiter.forget("pod", "withdrawn")  # its POST failed
    assert limiter.judge("pod", "withdrawn") == (Verdict.POST, 1)


def test_memory_is_bounded_by_the_number_of_objects() -> None:
    limiter = EventLimiter(burst=1, max_objects=100)
    for i in range(1000):
        assert limiter.judge(f"pod-{i}", "e") == (Verdict.POST, 1)
    assert len(limiter._objects) == 100
    assert limiter.judge("pod-999", "e2")[0] is Verdict.DROP, "a recent object keeps its state"
    assert limiter.judge("pod-0", "e2")[0] is Verdict.POST, "the oldest was forgotten"
