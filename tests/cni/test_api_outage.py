"""An API-server outage is when the node most needs its routes.

A real agent whose API server (kmock) sits behind a proxy the test takes down and brings
back; pods plumbed by flock-cni exec'd as a runtime does; the kernel's routes read back.
"""

from __future__ import annotations

import pathlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually
from tests.support.apiproxy import ApiProxy
from tests.support.apiserver import FakeCluster, pod_manifest
from tests.support.cni import NODE, CniNode, start_cni_node
from tests.support.netlink_monitor import watch_routes
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = "198.51.100.50/32"


@pytest.fixture
async def proxied_node(make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster,
                       agents: list[AgentProcess], tmp_path: pathlib.Path) -> AsyncIterator[tuple[CniNode, ApiProxy]]:
    """A CNI node whose agent reaches the API server only through a proxy (resync: 30 s)."""
    kmock_url = urllib.parse.urlsplit(cluster.url)
    proxy = ApiProxy(kmock_url.hostname or "127.0.0.1", kmock_url.port or 80)
    await proxy.up()
    try:
        node = await start_cni_node(make_netns, birds, cluster, agents, tmp_path, api_url=proxy.url,
                                    tickSeconds=1, resyncSeconds=30)
        yield node, proxy
    finally:
        await proxy.down()


async def add_ready_pod(node: CniNode, name: str) -> str:
    created = await node.cluster.create_pod(pod_manifest(name, node=NODE, anycast=ANYCAST[:-3], ready=True))
    _, path = node.pod_netns()
    result = await node.cni("ADD", name, path, pod=name, uid=created["metadata"]["uid"])
    assert result.code == 0, result.raw
    return str(result.output["interfaces"][0]["name"])


async def test_a_pod_deleted_during_an_outage_is_withdrawn_within_a_tick_of_the_apis_return(
    proxied_node: tuple[CniNode, ApiProxy],
) -> None:
    node, proxy = proxied_node
    dev_1, dev_2 = await add_ready_pod(node, "web-1"), await add_ready_pod(node, "web-2")
    await eventually(lambda: {dev for _, dev in next_hops(node.netns, ANYCAST)} == {dev_1, dev_2},
                     within=20, what="a multipath route over both pods")
    await eventually(lambda: node.agent.http_status("/readyz") == 200, within=10, what="the agent ready")

    await proxy.down()
    # Force-deleted while the agent cannot see the API: its watch will never say DELETED.
    await node.cluster.finish_deletion("web-2")
    await node.cluster._call("DELETE", "/api/v1/namespaces/default/pods/web-2")
    for _ in range(8):  # an outage of eight passes (~8 s): routes kept, alive, not ready
        assert node.agent.http_status("/healthz") == 200, "an API outage must not fail liveness"
        await node.agent.wait_for_passes(1)
    assert {dev for _, dev in next_hops(node.netns, ANYCAST)} == {dev_1, dev_2}, "routes kept as they were"
    assert node.agent.http_status("/readyz") == 503
    assert "flock_apiserver_up 0.0" in node.agent.metrics()

    await proxy.up()
    back = time.monotonic()
    await eventually(lambda: [dev for _, dev in next_hops(node.netns, ANYCAST)] == [dev_1], within=15,
                     what="the deleted pod's next hop gone")
    took = time.monotonic() - back
    assert took < 3.5, f"withdrawn {took:.1f}s after the API answered again: within a tick (1 s), not at the resync"
    await eventually(lambda: node.agent.http_status("/readyz") == 200, within=5, what="ready again")
    said = [line for line in node.agent.log().splitlines() if "flock.agent" in line and "API server: " in line]
    assert len(said) == 1, f"one line per outage, not per tick: {said}"


async def test_an_agent_restarted_during_an_outage_is_alive_and_changes_no_route(
    proxied_node: tuple[CniNode, ApiProxy],
) -> None:
    node, proxy = proxied_node
    dev_1, dev_2 = await add_ready_pod(node, "web-1"), await add_ready_pod(node, "web-2")
    await eventually(lambda: len(next_hops(node.netns, ANYCAST)) == 2, within=20, what="both pods routed")

    await proxy.down()
    node.agent.kill()
    with watch_routes(node.netns) as seen:
        node.agent.start()
        await eventually(lambda: node.agent.http_status("/healthz") == 200, within=20,
                         what="the restarted agent alive while the API server is away")
        for _ in range(5):  # five passes that hold the routes
            assert node.agent.http_status("/healthz") == 200 and node.agent.http_status("/readyz") == 503
            await node.agent.wait_for_passes(1)
        assert seen.changes() == [], "nothing routed or withdrawn before the first pod LIST"
    assert {dev for _, dev in next_hops(node.netns, ANYCAST)} == {dev_1, dev_2}

    await proxy.up()
    await eventually(lambda: node.agent.http_status("/readyz") == 200, within=10, what="ready once the API answers")
    await node.cluster.set_ready("web-2", False)
    await eventually(lambda: [dev for _, dev in next_hops(node.netns, ANYCAST)] == [dev_1], within=10,
                     what="passes act on the pods again")


async def test_a_pod_gone_while_the_watch_answered_410_gone_is_withdrawn_after_kopfs_relist(
    cni_node: CniNode,
) -> None:
    # kopf re-lists after "410 Gone" and sends no DELETED for pods that vanished meanwhile.
    node = cni_node
    dev_1, dev_2 = await add_ready_pod(node, "web-1"), await add_ready_pod(node, "web-2")
    await eventually(lambda: {dev for _, dev in next_hops(node.netns, ANYCAST)} == {dev_1, dev_2},
                     within=20, what="a multipath route over both pods")
    # Past the agent's own LIST (ready), and the LIST it makes after kopf's first listing.
    await eventually(lambda: node.agent.http_status("/readyz") == 200, within=10, what="the agent's pods listed")
    await node.agent.wait_for_passes(3)

    # web-2 vanishes where no watch event tells of it, then the watch answers 410 Gone.
    [pods_bus] = [bus for resource, bus in node.cluster.api._buses.items() if resource.plural == "pods"]
    node.cluster.api.objects["v1/pods", "default", "web-2"].delete()
    gone = time.monotonic()
    await pods_bus.put({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                    "reason": "Expired", "code": 410,
                                                    "message": "too old resource version"}})
    await eventually(lambda: [dev for _, dev in next_hops(node.netns, ANYCAST)] == [dev_1], within=15,
                     what="the vanished pod's next hop gone")
    took = time.monotonic() - gone
    assert took < 5, f"withdrawn {took:.1f}s after the watch's 410: after kopf's re-list, not at the resync (30 s)"
