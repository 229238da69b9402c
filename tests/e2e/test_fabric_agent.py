"""flock-agent with fabric settings, as a real process against kmock and a ToR BIRD.

One agent config for every node (as the chart renders it): the node (labels rack=r1)
keeps the ToR (TCP-MD5 password from a file, BFD) and the peer its rack selects; another
rack's peer is absent from its bird.conf. The password reaches bird.conf (never world-readable) and
nowhere else: not the agent's log, not an Event.
"""

from __future__ import annotations

import pathlib
import re
import stat
import uuid
from collections.abc import Callable

import pytest

from tests.bird.test_fabric_pair import PASSWORD, Session, bfd_sessions, established, tor_config
from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually
from tests.support.apiserver import FakeCluster, write_kubeconfig
from tests.support.config import agent_config_data, process_config

pytestmark = [pytest.mark.bird, pytest.mark.netns, pytest.mark.kopf, pytest.mark.slow]

NODE_ASN, TOR_ASN = 65101, 65000


async def test_the_agent_keeps_its_nodes_peers_and_puts_the_password_in_bird_conf_only(
    make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster, agents: list[AgentProcess],
    tmp_path: pathlib.Path,
) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    tor_bird = birds.start(tor, tor_config(str(wire.a_v4.ip), [Session(str(wire.b_v4.ip), password=PASSWORD)]))
    node_bird = birds.start(node, f"router id {wire.b_v4.ip};\nprotocol device {{}}\n",
                            directory=birds.directory("node"))
    cluster.create_namespace("default")
    cluster.api.objects["v1/nodes", None, "node-a"] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "uid": str(uuid.uuid4()), "labels": {"rack": "r1"}},
        "spec": {"podCIDRs": ["203.0.113.0/26", "2001:db8:200::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": str(wire.b_v4.ip)},
                                 {"type": "Hostname", "address": "node-a"}]}}

    password_file = tmp_path / "tor-password"
    password_file.write_text(PASSWORD + "\n")
    config = process_config(tmp_path, node_bird, node, router_id=str(wire.b_v4.ip), asn=NODE_ASN, podCIDRs=None)
    config["bird"]["peers"] = [
        {"address": str(wire.a_v4.ip), "asn": TOR_ASN, "passwordFile": str(password_file)},
        {"address": "192.0.2.77", "asn": 65077, "multihop": 2, "sourceAddress": "fromNodeIP",
         "nodeSelector": {"matchLabels": {"rack": "r1"}}},
        {"address": "192.0.2.99", "asn": 65099, "nodeSelector": {"matchLabels": {"rack": "r2"}}},
    ]
    agent = AgentProcess(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", cluster.url))
    agents.append(agent)
    agent.start()

    await eventually(lambda: established(tor_bird, "node0"), within=60,
                     what=f"the password session\n{tor_bird.birdc('show', 'protocols', 'all')}\n{agent.log()}")
    await eventually(lambda: bfd_sessions(tor_bird) == {str(wire.b_v4.ip): "Up"}, within=30, what="BFD up")
    text = node_bird.config_path.read_text()
    assert f'password "{PASSWORD}";' in text
    assert "neighbor 192.0.2.77 as 65077;" in text, "selected by rack=r1"
    assert f"source address {wire.b_v4.ip};\t# fromNodeIP" in text, "the Node's InternalIP"
    assert "192.0.2.99" not in text and "65099" not in text, "rack r2's peer"
    # The placeholder BIRD started with was 0644: its owner and group keep read, others lose it
    # (a new file is 0600: tests/bird/test_bird_control.py).
    assert stat.S_IMODE(node_bird.config_path.stat().st_mode) == 0o640

    log = agent.log()
    assert re.search(r"BGP peer not for this node peer=192\.0\.2\.99 asn=65099 nodeSelector=rack=r2", log), log
    assert re.search(r"BGP peer peer=192\.0\.2\.1 asn=65000 bfd=300ms x3 password=yes", log), log
    assert PASSWORD not in log
    assert not any(PASSWORD in str(event) for event in cluster.events())
    assert agent.alive(), log


def test_an_unreadable_password_file_stops_the_agent_with_one_line(tmp_path: pathlib.Path,
                                                                    agents: list[AgentProcess]) -> None:
    config = agent_config_data(stateDir=str(tmp_path / "state"), cniSocket=str(tmp_path / "cni.sock"))
    config["bird"]["peers"][0]["passwordFile"] = str(tmp_path / "missing")
    agent = AgentProcess(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9"))
    agents.append(agent)
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(timeout=30) == 2
    assert agent.log().strip() == (f"flock-agent: bird.peers[0].passwordFile: {tmp_path / 'missing'} "
                                   f"(peer 192.0.2.254): cannot read it: No such file or directory")
