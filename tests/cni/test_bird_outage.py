"""While BIRD is away, Events and logs say what really happened, once.

A real agent and a real BIRD in the node netns; the test kills BIRD and starts it again.
"""

from __future__ import annotations

import time

import pytest

from tests.support import birdlab
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import NODE, CniNode
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = "198.51.100.60/32"


async def test_a_withdrawal_waiting_for_bird_is_announced_once_it_happened(cni_node: CniNode,
                                                                         birds: birdlab.Birds) -> None:
    node = cni_node
    [node_bird] = birds.started
    created = await node.cluster.create_pod(pod_manifest("solo", node=NODE, anycast=ANYCAST[:-3], ready=True))
    _, path = node.pod_netns()
    assert (await node.cni("ADD", "solo", path, pod="solo", uid=created["metadata"]["uid"])).code == 0
    await eventually(lambda: len(next_hops(node.netns, ANYCAST)) == 1, within=15, what="the pod routed")
    await eventually(lambda: len(node.cluster.events("AnycastAdvertised")) == 1, within=10, what="advertised")

    node_bird.stop()
    await node.cluster.set_ready("solo", False)
    await node.agent.wait_for_passes(8)  # eight passes that cannot reach BIRD
    # BIRD may still announce the prefix (a BIRD restarting with graceful restart does):
    # the route stays, and nobody is told it was withdrawn.
    assert len(next_hops(node.netns, ANYCAST)) == 1
    assert node.cluster.events("AnycastWithdrawn") == []
    assert len(node.cluster.events("BirdReloadFailed")) == 1
    log = node.agent.log()
    assert log.count("BIRD reload failed") == 1, "logged when it starts, not every pass"

    restarted = birds.start(node.netns, node_bird.config_path.read_text(), directory=node_bird.directory)
    back = time.monotonic()
    await eventually(lambda: next_hops(node.netns, ANYCAST) == [], within=15, what="the route deleted")
    await eventually(lambda: len(node.cluster.events("AnycastWithdrawn")) == 1, within=10, what="one Withdrawn")
    [withdrawn] = node.cluster.events("AnycastWithdrawn")
    assert withdrawn["message"] == (f"{ANYCAST} withdrawn from {NODE}: pod not ready; "
                                    f"no next hop left, {NODE} no longer advertises it")
    assert "BIRD reload failed, the previous config stays live: cleared" in node.agent.log()
    assert time.monotonic() - back < 10
    restarted.stop()
