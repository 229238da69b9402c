"""flock-agent keeps daisy chaining's ring from the Nodes, as a real process against kmock.

node-a's agent (in its netns) reads the Nodes: node-b is Ready, node-c NotReady, so the
ring is node-a, node-b and node-a's kernel holds one hop to node-b. node-c turns Ready:
two hops. A restarted agent adopts the ring without a write. node-b and node-c leave:
the ring is node-a alone and the chain is taken down.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
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


async def test_a_member_silent_on_bfd_leaves_the_ring_and_comes_back(
        make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster, agents: list[AgentProcess],
        tmp_path: pathlib.Path) -> None:
    """node-b's BIRD answers BFD from node-a's address; frozen, it is silent: node-a's agent
    leaves it out of the ring within a BFD detection time and a tick, and takes it back
    when it answers again (bird.conf's ring neighbours: flock.core.daisychain.watched)."""
    node, peer = make_netns("node"), make_netns("peer")
    sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", peer, netns=node)
    for netns, address in ((node, ADDRESSES["node-a"]), (peer, ADDRESSES["node-b"])):
        sh("ip", "addr", "add", f"{address}/24", "dev", "uplink", netns=netns)
        sh("ip", "link", "set", "uplink", "up", netns=netns)
    bird = birds.start(node, "router id 192.0.2.2;\nprotocol device {}\n", directory=birds.directory("node"))
    peer_bird = birds.start(peer, (
        "router id 192.0.2.3;\nprotocol device {}\nprotocol bfd {\n"
        "\tmultihop { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n"
        f"\tneighbor {ADDRESSES['node-a']} local {ADDRESSES['node-b']} multihop yes;\n}}\n"),
        directory=birds.directory("peer"))
    cluster.create_namespace("default")
    put_node(cluster, "node-a", "True")
    put_node(cluster, "node-b", "True")
    config = process_config(tmp_path, bird, node, resyncSeconds=1)
    config["bird"]["bfd"] = {"intervalMs": 100, "multiplier": 3}
    agent = AgentProcess(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", cluster.url))
    agents.append(agent)
    agent.start()

    def session() -> str:
        found = re.search(rf"^{re.escape(ADDRESSES['node-b'])}\s+\S+\s+(\w+)", bird.birdc("show", "bfd", "sessions"),
                          re.M)
        return found[1] if found else "none"

    await eventually(lambda: session() == "Up", within=30, what=f"BFD with node-b Up\n{agent.log()}")
    assert f"neighbor {ADDRESSES['node-b']} local {ADDRESSES['node-a']} multihop yes;" in bird.config_path.read_text()
    await eventually(lambda: chain_metric(agent) == 2, within=10, what="the ring: node-a, node-b")

    await eventually(lambda: "daisy chain: node-b (192.0.2.3) answers on BFD" in agent.log(), within=10,
                     what=f"the agent sees node-b's BFD session Up\n{agent.log()}")
    os.kill(peer_bird.pid, signal.SIGSTOP)  # a hung node: silent, no goodbye
    try:
        await eventually(lambda: chain_metric(agent) == 0, within=10, what=f"node-b left out\n{agent.log()}")
        assert not chain_links(node)
        assert re.search(r"^flock_daisy_chain_silent_nodes 1\.0$", agent.metrics(), re.M)
        assert re.search(r"daisy chain: node-b \(192\.0\.2\.3\) is silent on BFD \(Down\): left out of the ring",
                         agent.log()), agent.log()
        # Still watched (and in bird.conf), so that it can come back.
        assert f"neighbor {ADDRESSES['node-b']} local" in bird.config_path.read_text()
    finally:
        os.kill(peer_bird.pid, signal.SIGCONT)
    await eventually(lambda: chain_metric(agent) == 2, within=15, what=f"node-b back\n{agent.log()}")
    assert "daisy chain: node-b (192.0.2.3) answers on BFD again: back in the ring" in agent.log()
    assert re.search(r"^flock_daisy_chain_silent_nodes 0\.0$", agent.metrics(), re.M)
    assert set(chain_links(node)) == {"flkdc1", "flkdcl"}
