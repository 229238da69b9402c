"""The lab's node-failure scenario, its pure parts: the ToR's BFD config, the black hole's
attribution and report, the runs it compares."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest

from flock.lab.report import attribute, long_lived_cause, long_lived_figures, render, render_compare
from flock.lab.scenario import failure_marks, variants
from flock.lab.topology import tor_bird_config, tor_protocol

V4, V6 = "198.51.100.10/32", "2001:db8:100::10/128"
TOR_A, TOR_B = "via 192.0.2.2 dev fl0", "via 192.0.2.6 dev fl1"
NEIGHBORS = [("192.0.2.2", 65101), ("192.0.2.6", 65102), ("2001:db8:ffff::2", 65101)]


def test_the_tors_bfd_is_a_protocol_and_bfd_on_in_every_node_session() -> None:
    text = tor_bird_config("192.0.2.125", NEIGHBORS, bfd=True)
    assert text.count("protocol bfd ") == 1
    assert text.count("\tbfd on;") == 3 and "graceful" not in text
    plain = tor_bird_config("192.0.2.125", NEIGHBORS)
    assert "bfd" not in plain
    assert plain == tor_bird_config("192.0.2.125", NEIGHBORS, bfd=False)
    assert f"protocol bgp {tor_protocol('2001:db8:ffff::2')} {{" in text


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs BIRD 2")
def test_the_tors_bfd_config_parses(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bird.conf"
    path.write_text(tor_bird_config("192.0.2.125", NEIGHBORS, bfd=True))
    done = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def sent(at: float, outcome: str = "timeout", end: float | None = None) -> dict[str, Any]:
    return {"start": at, "end": at + 1.0 if end is None else end, "target": "198.51.100.10", "outcome": outcome,
            "servedBy": ""}


HOLE = {"node": "node-b", "at": 10.0, "to": 10.9}


def test_failures_during_the_black_hole_are_blamed_on_the_failed_node() -> None:
    tor = [{"at": 10.9, "prefix": V4, "where": "ToR", "nexthops": [TOR_A]}]
    requests = [sent(9.5, end=10.5), sent(10.4), sent(10.9), sent(12.0), sent(5.0, "ok")]
    causes = [a["cause"] for a in attribute(requests, tor, [], {V4: [TOR_A, TOR_B]}, blackholes=[HOLE])]
    assert causes == [
        "timeout: in flight when node-b failed",
        "timeout: sent while the ToR still routed to the failed node-b (black hole)",
        "timeout: sent while the ToR still routed to the failed node-b (black hole)",
        "timeout: unexplained (no change of 198.51.100.10's route nearby)"]
    never = [a["cause"] for a in attribute([sent(30.0)], [], [], blackholes=[{**HOLE, "to": None}])]
    assert never == ["timeout: sent while the ToR still routed to the failed node-b (black hole)"]


def test_a_long_lived_connection_whose_node_failed_broke_for_that() -> None:
    pod = {"name": "web-2-1", "node": "node-b", "deletion": None, "networkRemoved": None,
           "torHop": {V4: TOR_B, V6: TOR_B}, "nodeHop": {V4: "via 203.0.113.66 dev ", V6: "via x dev "}}
    life = {"slot": 0, "target": "198.51.100.10", "localPort": 40000, "initial": True, "opened": 1.0,
            "servedBy": "web-2-1", "lastOk": 9.95, "echoes": 80, "end": 10.9, "outcome": "reset", "maxGap": 0.95}
    tor = [{"at": 10.9, "prefix": V4, "where": "ToR", "nexthops": [TOR_A]}]
    assert long_lived_cause(life, pod, tor) == "fabric"  # without the failure known: the ToR's change
    assert long_lived_cause(life, pod, tor, {"node-b": 10.0}) == "nodeFailed"
    assert long_lived_cause(life, pod, tor, {"node-b": 11.0}) == "fabric"  # broke before the failure
    figures = long_lived_figures([life], [], [pod], tor, 1, failed_nodes={"node-b": 10.0})
    assert figures["broken"]["nodeFailed"] == {"notRestarting": 1, "restarting": 0}
    assert "nodeFailed" not in long_lived_figures([life], [], [pod], tor, 1)["broken"]


def test_node_failure_compares_the_agents_bfd_on_and_off() -> None:
    runs, note = variants(True, scenario="node-failure", known=set())
    assert [(v.key, v.bfd) for v in runs] == [("bfd", True), ("no-bfd", False)] and note == ""
    [one], _ = variants(False, scenario="node-failure", bfd=False, known=set())
    assert one.bfd is False and one.title == "flock, BFD off"


def failure_report(bfd: bool, hole: float, failed: int) -> dict[str, Any]:
    failure = {"node": "node-b", "at": 10.0, "to": 10.0 + hole, "appliedSeconds": 0.006, "bfd": bfd,
               "frozen": ["bird", "flock-agent", "web-2-1's server"],
               "torBfdBefore": {"192.0.2.6": "Up" if bfd else "Down", "2001:db8:ffff:1::2": "Up" if bfd else "Down"},
               "torLastError": {"192.0.2.6": "Error: BFD session down" if bfd else "BGP Error: Hold timer expired"},
               "blackHole": {V4: hole - 0.05, V6: hole}, "blackHoleSeconds": hole}
    kinds = {"refused": 0, "reset": 0, "timeout": failed, "unreachable": 0, "error": 0}
    return {"scenario": "node-failure", "eligibility": "ready-and-not-terminating", "datapath": None, "rate": 200.0,
            "replicas": 3, "anycast": ["198.51.100.10", "2001:db8:100::10"], "terminating": None,
            "requests": {"total": 1000, "ok": 1000 - failed, "failed": failed, "failedPercent": failed / 10,
                         "failures": kinds, "servedBy": {}},
            "phases": [{"phase": "node-b fails -> ToR stops routing to node-b", "seconds": hole, "sent": 300,
                        "ok": 300 - failed, "failed": failed, "failures": {"timeout": failed}}],
            "failure": failure, "pods": [], "latency": {"p50": None, "max": None}, "shares": {},
            "torRouteChanges": 2, "events": {"byReason": {}, "samples": []}, "attributed": [], "longLived": None}


def test_the_report_shows_the_black_hole_side_by_side() -> None:
    on, off = failure_report(True, 0.894, 172), failure_report(False, 8.777, 1613)
    text = render(on)
    assert "node-b fails like a hung machine, agents' BFD on" in text
    assert "frozen (SIGSTOP: bird, flock-agent, web-2-1's server)" in text
    assert f"{V4} 844 ms, {V6} 894 ms" in text and "withdrawal latency" not in text
    table = render_compare([("BFD on (300 ms x 3)", on), ("BFD off", off)])
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[1:])}
    assert rows["black hole at the ToR"] == ["894 ms", "8777 ms"]
    assert rows[V4] == ["844 ms", "8727 ms"]
    assert rows["the ToR's BFD to node-b before"] == ["Up, Up", "Down, Down"]
    assert rows["node-b fails -> ToR stops routing to node-b"] == ["172 of 300", "1613 of 300"]
    assert rows["failed"] == ["172 (17.200%)", "1613 (161.300%)"]
    # A long value gets a column wide enough: the columns never run into each other.
    [errors] = [line for line in table.splitlines() if line.startswith("the ToR's last error")]
    assert "Error: BFD session down  " in errors and errors.endswith("BGP Error: Hold timer expired")


def test_the_phases_of_a_node_failure() -> None:
    assert failure_marks(HOLE) == [("node-b fails", 10.0), ("ToR stops routing to node-b", 10.9)]
    assert failure_marks({**HOLE, "to": None}) == [("node-b fails", 10.0)]
