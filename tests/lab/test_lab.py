"""The lab, run as a user runs it: `flock lab run --compare` (shortened), then `down`."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

FLOCK = str(pathlib.Path(sys.executable).with_name("flock"))


def lab_leftovers(run_dir: pathlib.Path) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in names.splitlines() if line.startswith("flk-lab-")]
    for pattern in (str(run_dir), "flock.lab.(apiserver|podserver|load)"):
        procs = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
        found += [line for line in procs.splitlines() if "pgrep" not in line]
    return found


@pytest.mark.timeout(600)
def test_rolling_restart_loses_almost_nothing_where_ready_only_loses_many(tmp_path: pathlib.Path) -> None:
    run_dir, figures = tmp_path / "lab", tmp_path / "lab.json"
    done = subprocess.run([FLOCK, "lab", "run", "--compare", "--rate", "100", "--run-dir", str(run_dir),
                           "--json", str(figures)], capture_output=True, text=True, timeout=540)
    print(done.stdout, done.stderr)  # the report, shown when the test fails
    assert done.returncode == 0
    result = json.loads(figures.read_text())
    flock, ready_only = result["runs"]["ready-and-not-terminating"], result["runs"]["ready-only"]
    comparison = result["comparison"]

    assert flock["requests"]["total"] > 2000 and ready_only["requests"]["total"] > 2000
    assert ready_only["requests"]["failed"] > 0, "the bug flock fixes must be reproduced, not assumed"
    assert flock["requests"]["failedPercent"] <= 0.2
    assert flock["requests"]["failed"] * 20 <= ready_only["requests"]["failed"]
    assert comparison["readyOnlyFailed"] == ready_only["requests"]["failed"]
    for pod in flock["pods"]:
        assert pod["withdrawalSeconds"] is not None and pod["withdrawalSeconds"] < 1.0, pod
    assert flock["events"]["byReason"].get("AnycastWithdrawn", 0) >= 6  # 3 pods x 2 families
    assert "flock rule" in done.stdout and "ready-only rule" in done.stdout

    assert lab_leftovers(run_dir) == []
    assert not run_dir.exists()


def test_down_on_a_clean_machine_is_a_no_op(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([FLOCK, "lab", "down", "--run-dir", str(tmp_path / "never-up")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "nothing to remove" in done.stdout


def test_down_cleans_up_after_a_killed_run(tmp_path: pathlib.Path) -> None:
    run_dir = tmp_path / "lab"
    up = subprocess.run([FLOCK, "lab", "up", "--run-dir", str(run_dir), "--replicas", "2"],
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert lab_leftovers(run_dir), "the lab should be running now"
    (run_dir / "state.json").unlink()  # as if the controller died before it could save
    down = subprocess.run([FLOCK, "lab", "down", "--run-dir", str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert lab_leftovers(run_dir) == []
