"""Shared fixtures: privilege checks and network namespaces that clean up after themselves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.support import netns as ns

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _privilege_problem(needs_bird: bool) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if needs_bird and (shutil.which("bird") is None or shutil.which("birdc") is None):
        return "needs BIRD 2 (bird, birdc)"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    # A crashed earlier run may have left namespaces behind: ours only (flk-*).
    if os.geteuid() == 0 and shutil.which("ip"):
        for name in ns.stale():
            ns.delete(name)


def pytest_runtest_setup(item: pytest.Item) -> None:
    markers = {m.name for m in item.iter_markers()}
    if not markers & {"netns", "bird"}:
        return
    problem = _privilege_problem(needs_bird="bird" in markers)
    if problem is None:
        return
    if UNDER_CI:
        pytest.fail(f"privileged test cannot run under CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def make_netns() -> Iterator[Callable[[str], str]]:
    """Factory: ``make_netns("node")`` -> a fresh ``flk-node-xxxxxx`` namespace, deleted at teardown."""
    made: list[str] = []

    def factory(role: str) -> str:
        name = ns.create(ns.new_name(role))
        made.append(name)
        return name

    yield factory
    for name in reversed(made):
        ns.delete(name)
