"""Shared fixtures: privilege checks and network namespaces that clean up after themselves."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from flock.lab.apiserver import Emulator
from tests.support import birdlab
from tests.support import netns as ns
from tests.support.agent import AgentProcess
from tests.support.apiserver import KEPT_REQUESTS, FakeCluster, declare_core_resources
from tests.support.environment import UNDER_CI


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


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """kmock's plugin builds the lab's Emulator (flat cost, field selectors), keeping the
    last KEPT_REQUESTS finished requests for tests that check what the agent asked."""
    return {**kmock_options, "cls": Emulator, "keep": KEPT_REQUESTS}


@pytest.fixture
async def cluster(kmock: Emulator) -> AsyncIterator[FakeCluster]:
    """kmock as the Kubernetes API (Pods, Nodes, Namespaces, Events declared)."""
    declare_core_resources(kmock)
    yield FakeCluster(kmock, kmock.servers[0])


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()
        # Shown by pytest only when the test failed.
        print(f"--- {agent.log_path} (last 150 lines) ---")
        print("\n".join(agent.log().splitlines()[-150:]))


@pytest.fixture
def birds() -> Iterator[birdlab.Birds]:
    """Start BIRDs through this; every one is stopped by its PID at teardown."""
    with birdlab.Birds() as started:
        yield started
