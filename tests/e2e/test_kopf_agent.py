"""flock-agent as a real kopf operator against kmock, with real netlink and real BIRD.

Topology: a ToR netns and a node netns joined by link 0; BIRD in both (eBGP, one
session per address family); pods plumbed into the node as the CNI plugin would. The
test writes allocation records as the CNI side would, then drives the Pods in the API.
"""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

from flock.model import Allocation, AllocationState, ContainerID, PodRef
from flock.store import AllocationStore
from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually, free_port
from tests.support.apiserver import FakeCluster, pod_manifest, write_kubeconfig
from tests.support.netns import plumb_pod, sh

pytestmark = [pytest.mark.bird, pytest.mark.netns, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = ["198.51.100.10/32", "2001:db8:100::10/128"]
NODE_ASN, TOR_ASN = 65101, 65000


def node_routes(netns: str) -> set[str]:
    return birdlab.kernel_prefixes(netns, proto="201")


async def test_pod_lifecycle_routes_advertises_withdraws_and_posts_events(
    make_netns, birds, cluster: FakeCluster, agents, tmp_path: pathlib.Path,  # type: ignore[no-untyped-def]
) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    birds.start(tor, birdlab.tor_config(router_id=wire.a_v4.ip, asn=TOR_ASN,
                                        neighbors=[(wire.b_v4.ip, NODE_ASN), (wire.b_v6.ip, NODE_ASN)]))
    node_bird_dir = birds.directory("node")
    node_bird = birds.start(node, f"router id {wire.b_v4.ip};\nprotocol device {{}}\n",
                            directory=node_bird_dir)

    web1 = plumb_pod(node, make_netns("pod"), "c-web-1", ["203.0.113.11", "2001:db8:200::11"],
                     ["198.51.100.10", "2001:db8:100::10"])
    store = AllocationStore(tmp_path / "state")
    await store.load()
    await store.put(Allocation(ContainerID(web1.container_id), PodRef("default", "web-1"),
                               web1.host_ifname, web1.ips, web1.anycast, AllocationState.COMMITTED))
    # A pod of another node that this node's store knows by name: it must have no effect.
    await store.put(Allocation(ContainerID("c-web-9"), PodRef("default", "web-9"), web1.host_ifname,
                               web1.ips, (birdlab.ipaddress.ip_address("198.51.100.20"),),
                               AllocationState.COMMITTED))

    cluster.create_namespace("default")
    cluster.create_node("node-a", ["203.0.113.0/26", "2001:db8:200::/64"])
    cluster.create_node("node-b", ["203.0.113.64/26", "2001:db8:201::/64"])

    agent = AgentProcess(tmp_path, {
        "nodeName": "node-a",
        "hostNetns": node,
        "stateDir": str(tmp_path / "state"),
        "cniSocket": str(tmp_path / "cni.sock"),
        "anycastPools": [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
        "tickSeconds": 0.5,
        "listen": f"127.0.0.1:{free_port()}",
        "bird": {"configPath": str(node_bird.config_path), "socket": str(node_bird.socket),
                 "routerId": str(wire.b_v4.ip), "asn": NODE_ASN,
                 "peers": [{"address": str(wire.a_v4.ip), "asn": TOR_ASN},
                           {"address": str(wire.a_v6.ip), "asn": TOR_ASN}]},
    }, write_kubeconfig(tmp_path / "kubeconfig", cluster.url))
    agents.append(agent)
    agent.start()

    # The agent renders its BIRD config (pod CIDRs from the Node) and the ToR learns them.
    await eventually(lambda: birdlab.has_all(tor, ["203.0.113.0/26", "2001:db8:200::/64"]),
                     within=60, what="the ToR learns the node's pod CIDRs over BGP")
    assert agent.alive(), agent.log()

    await cluster.create_pod(pod_manifest("web-1", node="node-a", anycast="198.51.100.10 2001:db8:100::10"))
    await cluster.create_pod(pod_manifest("web-9", node="node-b", anycast="198.51.100.20", ready=True))
    await asyncio.sleep(1.5)
    assert node_routes(node) == set(), "a pod that is not Ready must not be routed"

    await cluster.set_ready("web-1", True)
    await eventually(lambda: node_routes(node) == set(ANYCAST), within=20,
                     what="the node routes the anycast IPs to the Ready pod")
    await eventually(lambda: birdlab.has_all(tor, ANYCAST), within=30,
                     what="the ToR learns the anycast /32 and /128")
    route = json.loads(sh("ip", "-j", "route", "show", "198.51.100.10/32", netns=node))[0]
    assert (route["gateway"], route["dev"]) == ("203.0.113.11", web1.host_ifname)
    await eventually(lambda: len(cluster.events("AnycastAdvertised")) == 2, within=10,
                     what="two AnycastAdvertised Events (v4 and v6) in the API")
    advertised = cluster.events("AnycastAdvertised")
    assert {e["involvedObject"]["name"] for e in advertised} == {"web-1"}
    assert all(e["type"] == "Normal" for e in advertised)

    assert "198.51.100.20/32" not in birdlab.kernel_prefixes(node), "another node's pod was routed"
    assert not any(e["involvedObject"]["name"] == "web-9" for e in cluster.events())

    # kubectl annotate --overwrite on the running pod: the IP taken off is withdrawn...
    await cluster.patch_pod("web-1", {"metadata": {"annotations": {"flock.io/anycast": "2001:db8:100::10"}}})
    await eventually(lambda: node_routes(node) == {ANYCAST[1]}, within=10,
                     what="the node stops routing the IP taken off the annotation")
    await eventually(lambda: birdlab.has_none(tor, ANYCAST[:1]) and birdlab.has_all(tor, ANYCAST[1:]),
                     within=10, what="the ToR loses only that prefix")
    await eventually(lambda: len(cluster.events("AnycastWithdrawn")) == 1, within=10, what="one AnycastWithdrawn")
    assert "no longer in its flock.io/anycast annotation" in cluster.events("AnycastWithdrawn")[0]["message"]
    # ...and put back (it is still on the pod's lo from ADD), it is routed again.
    await cluster.patch_pod("web-1", {"metadata": {"annotations": {
        "flock.io/anycast": "198.51.100.10 2001:db8:100::10"}}})
    await eventually(lambda: birdlab.has_all(tor, ANYCAST), within=10, what="the ToR learns the prefix again")
    assert node_routes(node) == set(ANYCAST)
    await eventually(lambda: len(cluster.events("AnycastAdvertised")) == 3, within=10,
                     what="a third AnycastAdvertised Event")

    await cluster.mark_for_deletion("web-1")
    await eventually(lambda: birdlab.has_none(tor, ANYCAST), within=10,
                     what="the ToR loses the anycast prefixes once the pod is terminating")
    assert node_routes(node) == set()
    await eventually(lambda: len(cluster.events("AnycastWithdrawn")) == 3, within=10,
                     what="two more AnycastWithdrawn Events")
    assert sum("pod terminating" in e["message"] for e in cluster.events("AnycastWithdrawn")) == 2

    # The agent's own requests: pods listed and watched for this node only, and never written.
    requests = cluster.agent_requests()
    pod_reads = [r for r in requests if r.resource is not None and r.resource.plural == "pods"
                 and r.method.value.upper() == "GET"]
    assert pod_reads, "the agent never listed or watched pods"
    assert all(r.params.get("fieldSelector") == "spec.nodeName=node-a" for r in pod_reads), \
        [str(r.url) for r in pod_reads]
    pod_writes = [r for r in requests if r.resource is not None and r.resource.plural == "pods"
                  and r.method.value.upper() in ("POST", "PUT", "PATCH", "DELETE")]
    assert pod_writes == []
    assert agent.alive(), agent.log()
