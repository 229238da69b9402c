"""flock-agent keeps daisy chaining's ring from the Nodes, as a real process against kmock.

node-a's agent (in its netns) reads the Nodes: node-b is Ready, node-c NotReady, so the
ring is node-a, node-b and node-a's kernel holds one hop to node-b. node-c turns Ready:
two hops. A restarted agent adopts the ring without a write. node-b and node-c leave:
the ring is node-a alone and the chain is taken down.
"""

from __future__ import annotations

import pathlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually
from tests.support.apiserver import FakeCluster, write_kubeconfig
from tests.support.config import process_config
from tests.support.netns import sh

pytestmark = [pytest.mark.bird, pytest.mark.netns, pytest.mark.kopf, pytest.mark.slow]

ADDRESSES = {"node-a": "192.0.2.2", "node-b": "192.0.2.3", "node-c": "192.0.2.4"}


def put_node(cluster: FakeCluster, name: str, ready: str) -> None:
    cluster.api.objects["v1/nodes", None, name] = {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": str(uuid.uuid4())},
        "spec": {"podCIDRs": []},
        "status": {"addresses": [{"type": "InternalIP", "address": ADDRESSES[name]}],
                   "conditions": [{"type": "Ready", "status": ready}]}}


def chain_links(netns: str) -> dict[str, dict[str, Any]]:
    """flock's VXLAN links: name -> {vni, remote, index}."""
    links = {}
    for block in sh("ip", "-d", "-o", "link", "show", "type", "vxlan", netns=netns).splitlines():
        found = re.search(r"^(\d+): (flkdc\w+):.* vxlan id (\d+) remote (\S+)", block)
        if found:
            links[found[2]] = {"index": int(found[1]), "vni": int(found[3]), "remote": found[4]}
    return links


def chain_metric(agent: AgentProcess) -> float | None:
    found = re.search(r"^flock_daisy_chain_nodes (\S+)$", agent.metrics(), re.M)
    return float(found[1]) if found else None


async def test_the_agent_keeps_the_ring_from_the_nodes(make_netns: Callable[[str], str], birds: birdlab.Birds,
                                                       cluster: FakeCluster, agents: list[AgentProcess],
                                                       tmp_path: pathlib.Path) -> None:
    node = make_netns("node")
    sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer", netns=node)
    sh("ip", "addr", "add", f"{ADDRESSES['node-a']}/24", "dev", "uplink", netns=node)
    sh("ip", "link", "set", "uplink", "up", netns=node)
    bird = birds.start(node, "router id 192.0.2.2;\nprotocol device {}\n", directory=birds.directory("node"))
    cluster.create_namespace("default")
    put_node(cluster, "node-a", "True")
    put_node(cluster, "node-b", "True")
    put_node(cluster, "node-c", "False")
    config = process_config(tmp_path, bird, node, resyncSeconds=1)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)

    def started() -> AgentProcess:
        agent = AgentProcess(tmp_path, config, kubeconfig)
        agents.append(agent)
        agent.start()
        return agent

    agent = started()
    # The metric is set once the whole plan is in the kernel (the links come first, the rules last).
    await eventually(lambda: agent.http_status("/metrics") == 200 and chain_metric(agent) == 2, within=30,
                     what=f"flock_daisy_chain_nodes 2\n{agent.log()}")
    assert set(chain_links(node)) == {"flkdc1", "flkdcl"}, "a one-hop ring to node-b"
    assert chain_links(node)["flkdc1"]["remote"] == ADDRESSES["node-b"]
    assert "lookup 1100001" in sh("ip", "rule", "show", netns=node)
    assert ADDRESSES["node-b"] in sh("nft", "list", "set", "inet", "flock", "chain_peers_v4", netns=node)
    assert 'flock_daisy_chain_packets_total{what="forwarded"} 0.0' in agent.metrics()
    assert re.search(r"daisy chain: 2 nodes, next 192\.0\.2\.3, up to 1 hop\(s\)", agent.log()), agent.log()

    put_node(cluster, "node-c", "True")  # ring a, b, c: two hops; the last stop goes back two
    await eventually(lambda: chain_metric(agent) == 3, within=15, what=f"a two-hop ring\n{agent.log()}")
    assert set(chain_links(node)) == {"flkdc1", "flkdc2", "flkdcl"}
    links = chain_links(node)
    assert links["flkdc2"]["remote"] == ADDRESSES["node-b"] and links["flkdcl"]["remote"] == ADDRESSES["node-b"]
    assert links["flkdc2"]["vni"] == links["flkdc1"]["vni"] + 1 == links["flkdcl"]["vni"] + 2

    agent.stop()
    before = len(agent.log())  # both agents write the same log file
    again = started()
    await eventually(lambda: "daisy chain: 3 nodes" in again.log()[before:], within=30,
                     what=f"the ring read\n{again.log()}")
    assert re.search(r"daisy chain: 3 nodes, next 192\.0\.2\.3, up to 2 hop\(s\) \(0 kernel writes\)",
                     again.log()[before:]), again.log()[before:]
    assert chain_links(node) == links, "adopted: the same links, not made again"

    del cluster.api.objects["v1/nodes", None, "node-b"]
    put_node(cluster, "node-c", "Unknown")
    await eventually(lambda: chain_metric(again) == 0, within=15, what=f"the chain taken down\n{again.log()}")
    assert not chain_links(node) and "1100001" not in sh("ip", "rule", "show", netns=node)
    assert again.alive(), again.log()
