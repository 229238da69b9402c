"""BIRD away: withdrawals need no BIRD reload, so they go on, and BIRD's restart needs no agent.

A real agent and a real BIRD in the node netns; the test kills BIRD and starts it again.
"""

from __future__ import annotations

import pytest

from tests.support import birdlab
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import NODE, CniNode
from tests.support.routes import WITHDRAWN, next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = "198.51.100.60/32"


def learned(bird: birdlab.RunningBird) -> str:
    return bird.birdc("show", "route", "protocol", "flock_kernel_v4")


async def test_withdrawals_go_on_while_bird_is_away_and_a_restarted_bird_learns_the_kernel(
        cni_node: CniNode, birds: birdlab.Birds) -> None:
    node = cni_node
    [node_bird] = birds.started
    created = await node.cluster.create_pod(pod_manifest("solo", node=NODE, anycast=ANYCAST[:-3], ready=True))
    _, path = node.pod_netns()
    assert (await node.cni("ADD", "solo", path, pod="solo", uid=created["metadata"]["uid"])).code == 0
    await eventually(lambda: len(next_hops(node.netns, ANYCAST)) == 1, within=15, what="the pod routed")
    await eventually(lambda: len(node.cluster.events("AnycastAdvertised")) == 1, within=10, what="advertised")
    await eventually(lambda: ANYCAST in learned(node_bird), within=10, what="BIRD learned the route")

    node_bird.stop()
    await node.cluster.set_ready("solo", False)
    # The withdrawal is a re-tag of the kernel route: no BIRD needed, and it really happened.
    await eventually(lambda: next_hops(node.netns, ANYCAST) == [], within=15, what="the route re-tagged")
    await eventually(lambda: len(node.cluster.events("AnycastWithdrawn")) == 1, within=10, what="one Withdrawn")
    [withdrawn] = node.cluster.events("AnycastWithdrawn")
    assert withdrawn["message"] == (f"{ANYCAST} withdrawn from {NODE}: pod not ready; "
                                    f"no next hop left, {NODE} no longer advertises it")
    await eventually(lambda: next_hops(node.netns, ANYCAST, WITHDRAWN) == [], within=15,
                     what="the withdrawn route deleted after its linger")
    await node.agent.wait_for_passes(4)
    assert node.cluster.events("BirdReloadFailed") == []
    assert "BIRD reload failed" not in node.agent.log(), "nothing went wrong"

    # BIRD comes back with the config on disk: it learns what the kernel routes, alone.
    restarted = birds.start(node.netns, node_bird.config_path.read_text(), directory=node_bird.directory)
    await node.cluster.set_ready("solo", True)
    await eventually(lambda: len(next_hops(node.netns, ANYCAST)) == 1, within=15, what="routed again")
    await eventually(lambda: ANYCAST in learned(restarted), within=10, what="the restarted BIRD learned it")
    assert node.cluster.events("BirdReloadFailed") == []
    restarted.stop()
