"""Both ways to start the agent refuse a bad config at once, naming the bad key."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kopf]

BIN = pathlib.Path(sys.executable).parent
REPO = pathlib.Path(__file__).resolve().parents[2]
BAD = "nodeName: node-a\nbird: {routerId: 192.0.2.1, asn: 65001}\ntickSecond: 2\n"  # a typo'd key


def test_flock_agent_refuses_a_bad_config_with_one_line(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(BAD)
    done = subprocess.run([str(BIN / "flock-agent"), "--config", str(config)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], "one line"
    assert "tickSecond" in done.stderr and done.stderr.startswith("flock-agent: ")


def test_flock_agent_version_needs_no_config_and_names_the_installed_package() -> None:
    done = subprocess.run([str(BIN / "flock-agent"), "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"flock-agent {importlib.metadata.version('flock')}\n"


def test_kopf_run_stops_on_a_bad_config_instead_of_retrying(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(BAD)
    env = {**os.environ, "FLOCK_CONFIG": str(config), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run([str(BIN / "kopf"), "run", "--standalone", "--all-namespaces", "handlers/agent.py"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert done.returncode != 0
    assert "failed permanently: flock-agent: config: unknown key(s) tickSecond" in done.stderr
    assert "will try again" not in done.stderr
