"""Fixtures of the CNI tests; the node they start is tests/support/cni.py's."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support import birdlab
from tests.support.agent import AgentProcess
from tests.support.apiserver import FakeCluster
from tests.support.cni import POD_CIDRS, CniNode, start_cni_node


@pytest.fixture
async def cni_node(request: pytest.FixtureRequest, make_netns: Callable[[str], str], birds: birdlab.Birds,
                   cluster: FakeCluster, agents: list[AgentProcess],
                   tmp_path: pathlib.Path) -> AsyncIterator[CniNode]:
    """A node with BIRD, flock-agent and flock-cni. Indirect parameter (optional): its pod CIDRs
    (a list), or agent.yaml keys (a dict)."""
    param: list[str] | dict[str, Any] = getattr(request, "param", POD_CIDRS)
    if isinstance(param, dict):
        yield await start_cni_node(make_netns, birds, cluster, agents, tmp_path, **param)
    else:
        yield await start_cni_node(make_netns, birds, cluster, agents, tmp_path, pod_cidrs=param)
