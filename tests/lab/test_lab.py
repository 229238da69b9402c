"""The lab, run as a user runs it: `flock lab run --compare` (shortened), then `down`."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

FLOCK = str(pathlib.Path(sys.executable).with_name("flock"))


def lab_leftovers(run_dir: pathlib.Path, lab_id: str) -> list[str]:
    """This lab's namespaces and processes, and any veth of the lab's in the root namespace."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in names.splitlines() if line.startswith(f"flk-lab-{lab_id}-")]
    for pattern in (str(run_dir), f"flk-lab-{lab_id}-"):
        procs = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
        found += [line for line in procs.splitlines() if "pgrep" not in line]
    veths = json.loads(subprocess.run(["ip", "-j", "link", "show", "type", "veth"], capture_output=True,
                                      text=True).stdout or "[]")
    found += [f"veth {v['ifname']}" for v in veths if re.fullmatch(r"fl\d+|flock[0-9a-f]{8}", v["ifname"])]
    return found


def lab_id_of(run_dir: pathlib.Path) -> str:
    lab_id = (run_dir / "lab-id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{6}", lab_id), lab_id
    return lab_id


def check_long_lived(run: dict[str, Any], slots: int,
                     pods: frozenset[str] = frozenset({"web-0-1", "web-1-1", "web-2-1"})) -> None:
    """The long-lived connections' counts add up, and every initial pod got some."""
    figures = run["longLived"]
    assert figures["slots"] == slots and figures["openedAtStart"] == slots, figures
    assert sum(figures["endings"].values()) == figures["opened"]
    broken = figures["broken"]
    assert figures["brokenTotal"] == sum(c["notRestarting"] + c["restarting"] for c in broken.values())
    assert len(figures["brokenDetails"]) == figures["brokenTotal"]
    # The ECMP hash seeds differ per namespace: no pod is starved of the flows (polarisation).
    assert set(figures["spread"]["atStart"]) == pods, figures["spread"]
    # A pod that was not restarting never loses its connections to "pod gone"; few are unexplained.
    assert broken["podGone"]["notRestarting"] == 0, figures["brokenDetails"]
    unexplained = broken["unexplained"]["notRestarting"] + broken["unexplained"]["restarting"]
    assert unexplained * 5 <= max(figures["brokenTotal"], 5), figures["brokenDetails"]


@pytest.mark.timeout(900)
def test_rolling_restart_loses_almost_nothing_where_ready_only_loses_many(tmp_path: pathlib.Path) -> None:
    run_dir, figures = tmp_path / "lab", tmp_path / "lab.json"
    done = subprocess.run([FLOCK, "lab", "run", "--compare", "--rate", "100", "--long-lived", "40",
                           "--run-dir", str(run_dir), "--json", str(figures)], capture_output=True, text=True,
                          timeout=840)
    print(done.stdout, done.stderr)  # the report, shown when the test fails
    assert done.returncode == 0
    result = json.loads(figures.read_text())
    runs = result["runs"]
    assert result["columns"][:2] == ["ready-only", "flock-plain"]
    flock, ready_only = runs["flock-plain"], runs["ready-only"]
    comparison = result["comparison"]

    assert flock["requests"]["total"] > 2000 and ready_only["requests"]["total"] > 2000
    assert ready_only["requests"]["failed"] > 0, "the bug flock fixes must be reproduced, not assumed"
    assert flock["requests"]["failedPercent"] <= 0.2
    assert flock["requests"]["failed"] * 20 <= ready_only["requests"]["failed"]
    assert comparison["ready-only"]["failed"] == ready_only["requests"]["failed"]
    for pod in flock["pods"]:
        assert pod["withdrawalSeconds"] is not None and pod["withdrawalSeconds"] < 1.0, pod
    assert flock["events"]["byReason"].get("AnycastWithdrawn", 0) >= 3  # 3 pods, both families in one
    assert "ready-only" in done.stdout and "flock, plain multipath" in done.stdout

    for run in runs.values():
        check_long_lived(run, 40)
    # The ready-only rule keeps a terminating pod routed until its server has closed its
    # connections: they end cleanly. Plain multipath re-hashes connections of pods that
    # keep running when a next hop joins or leaves.
    assert ready_only["longLived"]["endings"]["closed"] > 0
    assert flock["longLived"]["broken"]["node"]["notRestarting"] > 0
    if "flock-pinned" in runs:  # the agent has datapath.connectionPinning
        pinned = runs["flock-pinned"]["longLived"]
        assert pinned["broken"]["node"]["notRestarting"] < flock["longLived"]["broken"]["node"]["notRestarting"]
        assert pinned["endings"]["closed"] > 0
    else:
        assert "connectionPinning" in result["note"] and result["note"] in done.stdout

    for run in runs.values():
        assert lab_leftovers(run_dir, run["labId"]) == []
    assert not run_dir.exists()


@pytest.mark.timeout(400)
def test_single_replica_last_resort_serves_until_its_server_stops_withdraw_fails_until_the_replacement(
        tmp_path: pathlib.Path) -> None:
    run_dir, figures = tmp_path / "lab", tmp_path / "lab.json"
    done = subprocess.run([FLOCK, "lab", "run", "--scenario", "single-replica", "--compare", "--rate", "100",
                           "--long-lived", "10", "--run-dir", str(run_dir), "--json", str(figures)],
                          capture_output=True, text=True, timeout=360)
    print(done.stdout, done.stderr)
    assert done.returncode == 0
    runs = json.loads(figures.read_text())["runs"]
    last_resort, withdraw = runs["last-resort"], runs["withdraw"]

    def phase(run: dict[str, Any], label: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [p for p in run["phases"] if p["phase"] == label]
        assert len(found) == 1, run["phases"]
        return found[0]

    # The old pod serves as a last resort until its server stops; withdrawn, nothing serves.
    serving = phase(last_resort, "deletion -> server stops")
    assert serving["sent"] > 100 and serving["failed"] * 50 <= serving["sent"], serving
    cut = phase(withdraw, "deletion -> server stops")
    assert cut["failed"] * 10 >= cut["sent"] * 9, cut
    for run in (last_resort, withdraw):  # nobody serves between the stop and the replacement's Ready
        gap = phase(run, "server stops -> replacement Ready")
        assert gap["failed"] * 10 >= gap["sent"] * 9, gap
        assert phase(run, "before deletion")["failed"] == 0
        check_long_lived(run, 10, pods=frozenset({"web-0-1"}))
        unexplained = [a for a in run["attributed"] if "unexplained" in a["cause"]]
        assert len(unexplained) * 100 <= max(run["requests"]["failed"], 100), unexplained
    assert withdraw["requests"]["failed"] > last_resort["requests"]["failed"]
    for run in runs.values():
        assert lab_leftovers(run_dir, run["labId"]) == []


@pytest.mark.timeout(300)
def test_node_failure_bfd_ends_the_black_hole_in_a_second_the_hold_timer_in_seconds(tmp_path: pathlib.Path) -> None:
    run_dir, figures = tmp_path / "lab", tmp_path / "lab.json"
    done = subprocess.run([FLOCK, "lab", "run", "--scenario", "node-failure", "--compare", "--rate", "100",
                           "--long-lived", "10", "--run-dir", str(run_dir), "--json", str(figures)],
                          capture_output=True, text=True, timeout=270)
    print(done.stdout, done.stderr)
    assert done.returncode == 0
    runs = json.loads(figures.read_text())["runs"]
    bfd, no_bfd = runs["bfd"], runs["no-bfd"]
    hole, no_bfd_hole = bfd["failure"]["blackHoleSeconds"], no_bfd["failure"]["blackHoleSeconds"]

    # The ToR's BFD came up with the agents' (the lab's BIRDs open BFD sockets), not without.
    assert set(bfd["failure"]["torBfdBefore"].values()) == {"Up"}, bfd["failure"]
    assert "Up" not in no_bfd["failure"]["torBfdBefore"].values(), no_bfd["failure"]
    # node-b hung, not stopped: its BIRD and agent frozen; the ToR found out by BFD, or by
    # its hold timer (9 s, from the last keepalive: 3 s apart at most).
    for run in (bfd, no_bfd):
        assert {"bird", "flock-agent"} <= set(run["failure"]["frozen"]), run["failure"]
    assert all("BFD session down" in e for e in bfd["failure"]["torLastError"].values()), bfd["failure"]
    assert all("Hold timer expired" in e for e in no_bfd["failure"]["torLastError"].values()), no_bfd["failure"]
    assert hole is not None and hole < 3.0, bfd["failure"]  # 0.6-0.9 s: 300 ms x 3 from the last BFD packet
    assert no_bfd_hole is not None and no_bfd_hole > 3.0 and hole < no_bfd_hole, no_bfd["failure"]

    for run in (bfd, no_bfd):
        phases = {p["phase"]: p for p in run["phases"]}
        assert phases["before node-b fails"]["failed"] <= 3, phases  # at most some in flight at the failure
        assert phases["after ToR stops routing to node-b"]["failed"] <= 3, phases
        assert phases["node-b fails -> ToR stops routing to node-b"]["failed"] > 0, phases
        assert len([a for a in run["attributed"] if "unexplained" in a["cause"]]) <= 3, run["attributed"]
        long_lived = run["longLived"]
        assert long_lived["brokenTotal"] == long_lived["broken"]["nodeFailed"]["notRestarting"], long_lived
        assert sum(long_lived["endings"].values()) == long_lived["opened"]
    assert bfd["requests"]["failed"] < no_bfd["requests"]["failed"]
    assert "black hole at the ToR" in done.stdout and "BFD off" in done.stdout
    for run in runs.values():
        assert lab_leftovers(run_dir, run["labId"]) == []
    assert not run_dir.exists()


def test_down_on_a_clean_machine_is_a_no_op(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([FLOCK, "lab", "down", "--run-dir", str(tmp_path / "never-up")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "nothing to remove" in done.stdout


def lab_down(run_dir: pathlib.Path) -> None:
    down = subprocess.run([FLOCK, "lab", "down", "--run-dir", str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.timeout(400)
def test_down_cleans_up_after_a_killed_run_and_leaves_another_lab_alone(tmp_path: pathlib.Path) -> None:
    other_dir, run_dir = tmp_path / "other", tmp_path / "lab"
    up = subprocess.run([FLOCK, "lab", "up", "--run-dir", str(other_dir), "--replicas", "2"],
                        capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        other_id = lab_id_of(other_dir)
        other_running = lab_leftovers(other_dir, other_id)

        # `flock lab run` killed mid-restart: its BIRDs, agents, API server, pods and load
        # generator (each in a session of its own) keep running, orphaned.
        run = subprocess.Popen([FLOCK, "lab", "run", "--run-dir", str(run_dir), "--rate", "50"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 240
            while not (run_dir / "load.log").exists() and run.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert run.poll() is None, "the run ended before it could be killed"
            time.sleep(3)  # into the rolling restart
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(10)
        lab_id = lab_id_of(run_dir)
        assert len(lab_leftovers(run_dir, lab_id)) > 5, "the killed run's lab should still be running"

        lab_down(run_dir)
        assert lab_leftovers(run_dir, lab_id) == []
        assert not run_dir.exists()
        assert lab_leftovers(other_dir, other_id) == other_running, "down touched another lab"
    finally:
        lab_down(other_dir)
    assert lab_leftovers(other_dir, other_id) == []
