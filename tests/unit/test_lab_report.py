"""The lab report's failure attribution: causes only where the observations support them."""

from __future__ import annotations

from typing import Any

from flock.lab.report import attribute, request_figures


def request(start: float, outcome: str, target: str = "198.51.100.10", end: float | None = None) -> dict[str, Any]:
    return {"start": start, "end": start + 0.01 if end is None else end, "target": target, "outcome": outcome,
            "servedBy": "" if outcome != "ok" else "web-0-1"}


CHANGES = [{"at": 10.0, "prefix": "198.51.100.10/32", "where": "node-a", "nexthops": ["via 203.0.113.3 dev x"]},
           {"at": 20.0, "prefix": "2001:db8:100::10/128", "where": "ToR", "nexthops": ["via 192.0.2.2 dev fl0"]}]
STOPPED = [{"pod": "web-0-1", "from": 30.0, "to": 33.0}, {"pod": "web-1-1", "from": 40.0, "to": None}]


def causes(*requests: dict[str, Any]) -> list[str]:
    return [a["cause"] for a in attribute(list(requests), CHANGES, STOPPED)]


def test_successes_are_not_attributed() -> None:
    assert causes(request(10.0, "ok")) == []


def test_a_refused_connection_is_blamed_on_the_pod_stopped_but_still_routed_then() -> None:
    assert causes(request(31.0, "refused")) == [
        "refused: sent while web-0-1 still attracted traffic with its server stopped"]
    assert causes(request(45.0, "refused")) == [  # web-1-1 never stopped attracting traffic
        "refused: sent while web-1-1 still attracted traffic with its server stopped"]


def test_a_refused_connection_with_no_such_pod_is_unexplained() -> None:
    assert causes(request(35.0, "refused")) == ["refused: unexplained (no pod was stopped and still routed then)"]


def test_a_failure_in_flight_during_a_change_of_its_own_prefix_is_a_rehash() -> None:
    [cause] = causes(request(9.9, "reset", end=10.05))
    assert cause.startswith("reset: in flight while the next hops of 198.51.100.10/32 changed at node-a")


def test_a_change_of_the_other_familys_prefix_explains_nothing() -> None:
    assert causes(request(19.9, "timeout", end=20.05)) == [
        "timeout: unexplained (no change of 198.51.100.10's route nearby)"]
    [cause] = causes(request(19.9, "timeout", target="2001:db8:100::10", end=20.05))
    assert "2001:db8:100::10/128 changed at ToR" in cause


def test_request_figures_count_each_kind_of_failure() -> None:
    figures = request_figures([request(1, "ok"), request(2, "refused"), request(3, "reset"), request(4, "ok")])
    assert (figures["total"], figures["ok"], figures["failed"], figures["failedPercent"]) == (4, 2, 2, 50.0)
    assert figures["failures"] == {"refused": 1, "reset": 1, "timeout": 0, "unreachable": 0, "error": 0}
