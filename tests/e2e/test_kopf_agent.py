"""flock-agent as a real kopf operator against kmock, with real netlink and real BIRD.

Topology: a ToR netns and a node netns joined by link 0; BIRD in both (eBGP, one
session per address family); pods plumbed into the node as the CNI plugin would. The
test writes allocation records as the CNI side would, then drives the Pods in the API.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from flock.adapters.store import AllocationStore
from flock.core.model import Allocation, AllocationState, ContainerID, PodRef
from tests.chart.rendering import render
from tests.support import birdlab, rbac
from tests.support.agent import AgentProcess, eventually
from tests.support.apiserver import FakeCluster, pod_manifest, write_kubeconfig
from tests.support.config import process_config
from tests.support.netlink_monitor import watch_routes
from tests.support.netns import plumb_pod, sh
from tests.support.routes import LAST_RESORT, flock_prefixes

pytestmark = [pytest.mark.bird, pytest.mark.netns, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = ["198.51.100.10/32", "2001:db8:100::10/128"]
NODE_ASN, TOR_ASN = 65101, 65000


def tor_and_node(make_netns: Callable[[str], str], birds: birdlab.Birds
                 ) -> tuple[str, str, birdlab.Link, birdlab.RunningBird]:
    """A ToR and a node netns on link 0, BIRD in each; the node's BIRD waits for flock's config."""
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    birds.start(tor, birdlab.tor_config(router_id=wire.a_v4.ip, asn=TOR_ASN,
                                        neighbors=[(wire.b_v4.ip, NODE_ASN), (wire.b_v6.ip, NODE_ASN)]))
    node_bird = birds.start(node, f"router id {wire.b_v4.ip};\nprotocol device {{}}\n",
                            directory=birds.directory("node"))
    return tor, node, wire, node_bird


def agent_config(node: str, wire: birdlab.Link, node_bird: birdlab.RunningBird, tmp_path: pathlib.Path,
                 tick_seconds: float) -> dict[str, Any]:
    """The node's agent peers with the ToR over link 0; its pod CIDRs come from its Node."""
    return process_config(tmp_path, node_bird, node, router_id=str(wire.b_v4.ip), asn=NODE_ASN,
                          peers=[(str(wire.a_v4.ip), TOR_ASN), (str(wire.a_v6.ip), TOR_ASN)],
                          podCIDRs=None, tickSeconds=tick_seconds)


async def test_pod_lifecycle_routes_advertises_withdraws_and_posts_events(
    make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster, agents: list[AgentProcess],
    tmp_path: pathlib.Path,
) -> None:
    tor, node, wire, node_bird = tor_and_node(make_netns, birds)

    web1 = plumb_pod(node, make_netns("pod"), "c-web-1", ["203.0.113.11", "2001:db8:200::11"],
                     ["198.51.100.10", "2001:db8:100::10"])
    store = AllocationStore(tmp_path / "state")
    await store.load()
    await store.put(Allocation(ContainerID(web1.container_id), PodRef("default", "web-1"),
                               web1.host_ifname, web1.ips, web1.anycast, AllocationState.COMMITTED))
    # A pod of another node that this node's store knows by name: it must have no effect.
    await store.put(Allocation(ContainerID("c-web-9"), PodRef("default", "web-9"), web1.host_ifname,
                               web1.ips, (ipaddress.ip_address("198.51.100.20"),),
                               AllocationState.COMMITTED))

    cluster.create_namespace("default")
    cluster.create_node("node-a", ["203.0.113.0/26", "2001:db8:200::/64"])
    cluster.create_node("node-b", ["203.0.113.64/26", "2001:db8:201::/64"])

    # A long tick: every change below must come from the watch waking the reconciler.
    agent = AgentProcess(tmp_path, agent_config(node, wire, node_bird, tmp_path, tick_seconds=30),
                         write_kubeconfig(tmp_path / "kubeconfig", cluster.url))
    agents.append(agent)
    agent.start()

    # The agent renders its BIRD config (pod CIDRs from the Node) and the ToR learns them.
    await eventually(lambda: birdlab.has_all(tor, ["203.0.113.0/26", "2001:db8:200::/64"]),
                     within=60, what="the ToR learns the node's pod CIDRs over BGP")
    assert agent.alive(), agent.log()

    before = agent.passes()
    assert before is not None, agent.log()
    await cluster.create_pod(pod_manifest("web-1", node="node-a", anycast="198.51.100.10 2001:db8:100::10"))
    await cluster.create_pod(pod_manifest("web-9", node="node-b", anycast="198.51.100.20", ready=True))
    # The tick is 30 s: a pass now is one the watch woke for these pods.
    await agent.wait_for_passes(1, since=before)
    assert flock_prefixes(node) == set(), "a pod that is not Ready must not be routed"

    await cluster.set_ready("web-1", True)
    await eventually(lambda: flock_prefixes(node) == set(ANYCAST), within=20,
                     what="the node routes the anycast IPs to the Ready pod")
    await eventually(lambda: birdlab.has_all(tor, ANYCAST), within=30,
                     what="the ToR learns the anycast /32 and /128")
    route = json.loads(sh("ip", "-j", "route", "show", "198.51.100.10/32", netns=node))[0]
    assert (route["gateway"], route["dev"]) == ("203.0.113.11", web1.host_ifname)
    await eventually(lambda: len(cluster.events("AnycastAdvertised")) == 1, within=10,
                     what="one AnycastAdvertised Event for both anycast IPs (v4 and v6) in the API")
    advertised = cluster.events("AnycastAdvertised")
    assert {e["involvedObject"]["name"] for e in advertised} == {"web-1"}
    assert all(e["type"] == "Normal" for e in advertised)
    assert advertised[0]["message"].startswith("2 anycast IPs advertised from node-a: pod ready; 198.51.100.10/32")

    assert "198.51.100.20/32" not in birdlab.kernel_prefixes(node), "another node's pod was routed"
    assert not any(e["involvedObject"]["name"] == "web-9" for e in cluster.events())

    # kubectl annotate --overwrite on the running pod: the IP taken off is withdrawn...
    await cluster.patch_pod("web-1", {"metadata": {"annotations": {"flock.io/anycast": "2001:db8:100::10"}}})
    await eventually(lambda: flock_prefixes(node) == {ANYCAST[1]}, within=10,
                     what="the node stops routing the IP taken off the annotation")
    await eventually(lambda: birdlab.has_none(tor, ANYCAST[:1]) and birdlab.has_all(tor, ANYCAST[1:]),
                     within=10, what="the ToR loses only that prefix")
    await eventually(lambda: len(cluster.events("AnycastWithdrawn")) == 1, within=10, what="one AnycastWithdrawn")
    assert "no longer in its flock.io/anycast annotation" in cluster.events("AnycastWithdrawn")[0]["message"]
    # ...and put back (it is still on the pod's lo from ADD), it is routed again.
    await cluster.patch_pod("web-1", {"metadata": {"annotations": {
        "flock.io/anycast": "198.51.100.10 2001:db8:100::10"}}})
    await eventually(lambda: birdlab.has_all(tor, ANYCAST), within=10, what="the ToR learns the prefix again")
    assert flock_prefixes(node) == set(ANYCAST)
    await eventually(lambda: len(cluster.events("AnycastAdvertised")) == 2, within=10,
                     what="a second AnycastAdvertised Event")

    # Terminating but still Ready, and no other replica here: kept as a last resort,
    # advertised with the AS path prepended (flock.io/anycast-terminating: last-resort, the default).
    await cluster.mark_for_deletion("web-1")
    await eventually(lambda: flock_prefixes(node, LAST_RESORT) == set(ANYCAST), within=10,
                     what="the routes re-tagged as last resort")
    tor_bird = birds.started[0]
    await eventually(lambda: "65101 65101 65101 65101" in tor_bird.birdc("show", "route", "for", ANYCAST[0], "all"),
                     within=10, what="the ToR sees the prefix with the AS path prepended 3 times")
    await eventually(lambda: len(cluster.events("AnycastLastResort")) == 1, within=10,
                     what="one AnycastLastResort Event, for both IPs")
    assert cluster.events("AnycastLastResort")[0]["message"].startswith(
        "2 anycast IPs kept as a last resort on node-a: pod terminating and no ready replica left on node-a")
    assert len(cluster.events("AnycastWithdrawn")) == 1

    await cluster.set_ready("web-1", False)  # its server stops: now it is withdrawn
    await eventually(lambda: birdlab.has_none(tor, ANYCAST), within=10,
                     what="the ToR loses the anycast prefixes once the pod is no longer Ready")
    assert flock_prefixes(node) == set() and flock_prefixes(node, LAST_RESORT) == set()
    await eventually(lambda: len(cluster.events("AnycastWithdrawn")) == 2, within=10,
                     what="one more AnycastWithdrawn Event, for both IPs")
    assert sum("2 anycast IPs withdrawn from node-a: pod terminating" in e["message"]
               for e in cluster.events("AnycastWithdrawn")) == 1

    # The agent's own requests: pods listed and watched for this node only, and never written.
    requests = cluster.agent_requests()
    pod_reads = [r for r in requests if r.resource is not None and r.resource.plural == "pods"
                 and r.method.value.upper() == "GET"]
    assert any(r.params.get("watch") == "true" for r in pod_reads), "the agent never watched pods"
    assert any(r.params.get("watch") != "true" and not r.url.path.endswith("/web-1") for r in pod_reads), \
        "the agent never listed pods"
    assert all(r.params.get("fieldSelector") == "spec.nodeName=node-a" for r in pod_reads
               if not r.url.path.startswith("/api/v1/namespaces/")), [str(r.url) for r in pod_reads]
    pod_writes = [r for r in requests if r.resource is not None and r.resource.plural == "pods"
                  and r.method.value.upper() in ("POST", "PUT", "PATCH", "DELETE")]
    assert pod_writes == []
    # The chart's ClusterRole covers every call the agent made here.
    needed = {p for r in requests if isinstance(p := rbac.required(r), rbac.Permission)}
    granted = rbac.granted(render().one("ClusterRole")["rules"])
    assert needed <= granted, f"the chart's ClusterRole lacks {sorted(map(str, needed - granted))}"
    assert agent.alive(), agent.log()


def last_reconfiguration(bird: birdlab.RunningBird) -> datetime.datetime:
    found = re.search(r"Last reconfiguration on (\S+ \S+)", bird.birdc("show", "status"))
    assert found, "birdc show status has no 'Last reconfiguration' line"
    return datetime.datetime.fromisoformat(found.group(1))


async def test_agent_restart_waits_for_the_pod_list_and_changes_nothing(
    make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster, agents: list[AgentProcess],
    tmp_path: pathlib.Path,
) -> None:
    """A new agent knows no pods until the API answers: it must not withdraw what is routed."""
    tor, node, wire, node_bird = tor_and_node(make_netns, birds)
    anycast = {"web-1": ["198.51.100.10", "2001:db8:100::10"], "web-2": ["198.51.100.11", "2001:db8:100::11"]}
    prefixes = ["198.51.100.10/32", "2001:db8:100::10/128", "198.51.100.11/32", "2001:db8:100::11/128"]
    store = AllocationStore(tmp_path / "state")
    await store.load()
    cluster.create_namespace("default")
    cluster.create_node("node-a", ["203.0.113.0/26", "2001:db8:200::/64"])
    for i, (name, ips) in enumerate(anycast.items(), start=1):
        pod = plumb_pod(node, make_netns("pod"), f"c-{name}", [f"203.0.113.1{i}", f"2001:db8:200::1{i}"], ips)
        await store.put(Allocation(ContainerID(pod.container_id), PodRef("default", name),
                                   pod.host_ifname, pod.ips, pod.anycast, AllocationState.COMMITTED))
        await cluster.create_pod(pod_manifest(name, node="node-a", anycast=" ".join(ips), ready=True))
    config = agent_config(node, wire, node_bird, tmp_path, tick_seconds=0.5)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    first = AgentProcess(tmp_path, config, kubeconfig)
    agents.append(first)
    first.start()
    await eventually(lambda: birdlab.has_all(tor, prefixes), within=30, what="the ToR learns both pods' prefixes")
    first.stop()
    reconfigured = last_reconfiguration(node_bird)
    config_file = node_bird.config_path.stat()

    # The API holds every pod LIST and WATCH (a slow or unreachable API server) while the
    # new agent starts: several ticks pass with nothing known of the pods.
    api_open = asyncio.Event()

    async def hold() -> None:
        await api_open.wait()  # then fall through to the emulator's answer

    cluster.api["get /api/v1/pods"] << hold
    with watch_routes(node) as node_changes, watch_routes(tor) as tor_changes:
        second = AgentProcess(tmp_path, config, kubeconfig)
        agents.append(second)
        first_log = len(second.log())  # the same file: the first agent's lines come before
        second.start()
        await eventually(lambda: second.http_status("/healthz") == 200, within=30,
                         what="the new agent alive (passes that hold the routes) while the API is away")
        await second.wait_for_passes(6)  # six ticks
        assert second.http_status("/healthz") == 200 and second.http_status("/readyz") == 503
        assert "agent started" not in second.log()[first_log:], "routing began before the pods were listed"
        api_open.set()
        await eventually(lambda: "agent started" in second.log()[first_log:], within=30,
                         what="the new agent lists its pods")
        await second.wait_for_passes(3, within=30)  # a few passes on the listed pods
        assert second.http_status("/readyz") == 200
    assert node_changes.changes() == [], "the restart changed the node's routes"
    assert tor_changes.changes() == [], "the restart changed the ToR's routes"
    # BIRD prints that time converted from its monotonic clock: it may differ by a ms between
    # two reads. A reconfiguration by the new agent would come seconds later (after the hold).
    assert abs((last_reconfiguration(node_bird) - reconfigured).total_seconds()) < 0.2, "the restart reconfigured BIRD"
    assert node_bird.config_path.stat().st_mtime_ns == config_file.st_mtime_ns, "the restart rewrote bird.conf"
    assert second.alive(), second.log()
