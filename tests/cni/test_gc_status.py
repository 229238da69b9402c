"""CNI 1.1's GC and STATUS, through the static flock-cni exec'd as a runtime does, against a
running agent, one still starting (API server away) and a stopped one."""

from __future__ import annotations

import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flock.core.cnispec import INCOMPATIBLE_VERSION, INVALID_CONFIG, PLUGIN_NOT_AVAILABLE, TRY_AGAIN_LATER
from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually, eventually_async
from tests.support.apiproxy import ApiProxy
from tests.support.apiserver import FakeCluster, pod_manifest
from tests.support.cni import ANY_SHARED, NODE, CniNode, CniResult, node_veths, start_cni_node
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]


def config_1_1(node: CniNode, **extra: Any) -> dict[str, Any]:
    """The plugin config a 1.1 runtime (libcni >= 1.2) derives from flock's conflist."""
    assert "1.1.0" in node.conflist["cniVersions"]
    return {**node.net_config, "cniVersion": "1.1.0", **extra}


async def gc(node: CniNode, *valid: str, **extra: Any) -> CniResult:
    attachments = [{"containerID": container, "ifname": "eth0"} for container in valid]
    config = config_1_1(node, **{"cni.dev/valid-attachments": attachments, **extra})
    return await node.exec_plugin("flock", "GC", "", "", ifname="", config=config)


async def status(node: CniNode) -> CniResult:
    return await node.exec_plugin("flock", "STATUS", "", "", ifname="", config=config_1_1(node))


async def add_pod(node: CniNode, name: str, anycast: str = "", ready: bool = False) -> str:
    """ADD a pod's sandbox (container ``ctr-<name>``); its host veth."""
    created = await node.cluster.create_pod(pod_manifest(name, node=NODE, anycast=anycast, ready=ready))
    _, path = node.pod_netns()
    result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=created["metadata"]["uid"])
    assert result.code == 0, result.raw
    return str(result.output["interfaces"][0]["name"])


def containers(node: CniNode) -> set[str]:
    return {record["containerID"] for record in node.records()}


async def test_status_is_ready_once_the_agent_has_started_and_not_available_once_it_stopped(
        cni_node: CniNode) -> None:
    node = cni_node

    async def ready() -> bool:
        return (await status(node)).code == 0

    await eventually_async(ready, within=30, what="STATUS ready")
    done = await status(node)
    assert (done.code, done.raw) == (0, "")

    node.agent.stop()
    done = await status(node)
    assert done.code == 1 and done.output["code"] == PLUGIN_NOT_AVAILABLE, done.raw
    assert done.output["msg"].startswith(f"flock-agent is not answering on {node.conflist['plugins'][0]['socket']}")
    gone = await gc(node)
    assert gone.code == 1 and gone.output["code"] == TRY_AGAIN_LATER, gone.raw


@pytest.fixture
async def node_without_api(make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster,
                           agents: list[AgentProcess], tmp_path: pathlib.Path) -> AsyncIterator[CniNode]:
    """A node whose agent starts while its API server (behind a proxy) does not answer."""
    kmock_url = urllib.parse.urlsplit(cluster.url)
    proxy = ApiProxy(kmock_url.hostname or "127.0.0.1", kmock_url.port or 80)
    await proxy.up()
    await proxy.down()
    try:
        yield await start_cni_node(make_netns, birds, cluster, agents, tmp_path, api_url=proxy.url, tickSeconds=1)
    finally:
        await proxy.down()


async def test_a_starting_agent_is_not_available_and_does_no_gc(node_without_api: CniNode) -> None:
    # Its pod CIDRs come from its config, but it has never listed its node's pods.
    node = node_without_api
    done = await status(node)
    assert done.code == 1 and done.output["code"] == PLUGIN_NOT_AVAILABLE, done.raw
    assert "has not listed this node's pods" in done.output["msg"]
    gone = await gc(node)
    assert gone.code == 1 and gone.output["code"] == TRY_AGAIN_LATER and "starting" in gone.output["msg"]


async def test_gc_releases_only_what_the_runtime_no_longer_lists(cni_node: CniNode) -> None:
    node = cni_node
    await eventually(lambda: node.records() == [] and node.agent.http_status("/readyz") == 200, within=30,
                     what="the agent ready")
    kept = await add_pod(node, "web-1", ANY_SHARED, ready=True)
    stale = await add_pod(node, "web-2", ANY_SHARED, ready=True)
    other = await add_pod(node, "db-1")
    await eventually(lambda: {dev for _, dev in next_hops(node.netns, "198.51.100.10/32")} == {kept, stale},
                     within=20, what="a multipath route over web-1 and web-2")

    # Just ADDed: within the grace, a GC whose list predates the ADDs releases nothing.
    done = await gc(node)
    assert (done.code, done.raw) == (0, "")
    assert containers(node) == {"ctr-web-1", "ctr-web-2", "ctr-db-1"}

    # db-1 is listed under another ifname: a container is matched by its id alone.
    config_extra = {"gcGraceSeconds": 0}
    attachments = [{"containerID": "ctr-web-1", "ifname": "eth0"}, {"containerID": "ctr-db-1", "ifname": "net1"}]
    done = await node.exec_plugin("flock", "GC", "", "", ifname="", config=config_1_1(
        node, **{"cni.dev/valid-attachments": attachments, **config_extra}))
    assert (done.code, done.raw) == (0, "")
    assert stale not in node_veths(node.netns) and {kept, other} <= node_veths(node.netns)
    # web-2 was a next hop of a shared route: it left the route first, web-1's traffic stayed.
    assert {dev for _, dev in next_hops(node.netns, "198.51.100.10/32")} == {kept}
    assert "GC released a stale allocation pod=default/web-2" in node.agent.log()

    # Again, at once (web-2's record may still wait for its pin to go): released once only.
    again = await gc(node, "ctr-web-1", "ctr-db-1", gcGraceSeconds=0)
    assert (again.code, again.raw) == (0, "")
    await eventually(lambda: containers(node) == {"ctr-web-1", "ctr-db-1"}, within=30, what="web-2's record gone")
    assert node.agent.log().count("GC released a stale allocation pod=default/web-2") == 1


@pytest.mark.parametrize(("config", "code"), [
    ({"cniVersion": "1.0.0", "cni.dev/valid-attachments": []}, INCOMPATIBLE_VERSION),
    ({"gcGraceSeconds": 0}, INVALID_CONFIG),  # no list at all
    ({"cni.dev/valid-attachments": [{"ifname": "eth0"}], "gcGraceSeconds": 0}, INVALID_CONFIG),
])
async def test_a_gc_it_cannot_read_releases_nothing(cni_node: CniNode, config: dict[str, Any], code: int) -> None:
    node = cni_node
    await eventually(lambda: node.agent.http_status("/readyz") == 200, within=30, what="the agent ready")
    await add_pod(node, "web-1")
    done = await node.exec_plugin("flock", "GC", "", "", ifname="", config=config_1_1(node, **config))
    assert done.code == 1 and done.output["code"] == code, done.raw
    assert containers(node) == {"ctr-web-1"}
