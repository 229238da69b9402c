"""The emulated API server (flock.lab.apiserver.Emulator, the tests' and the lab's):
field selectors on LIST and WATCH, and no request history that grows with the run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from flock.lab.apiserver import Emulator, field_selector
from tests.support.apiserver import KEPT_REQUESTS, FakeCluster, pod_manifest

NODE_A = "spec.nodeName=node-a"


async def setup(cluster: FakeCluster) -> None:
    cluster.create_namespace("default")
    for node in ("node-a", "node-b"):
        cluster.create_node(node)
    for name, node in (("a-1", "node-a"), ("a-2", "node-a"), ("b-1", "node-b")):
        await cluster.create_pod(pod_manifest(name, node=node))


class Watch:
    """An agent's pod watch for node-a, read line by line as kopf reads it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, within: float = 5.0) -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), within)
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                return event

    async def nothing(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            event = await self.next(within)
            raise AssertionError(f"unexpected watch event: {event}")


def seen(event: dict[str, Any]) -> tuple[str, str]:
    return event["type"], event["object"]["metadata"]["name"]


async def test_a_node_agents_list_gets_only_its_nodes_pods(cluster: FakeCluster) -> None:
    await setup(cluster)
    listing = await cluster._call("GET", f"/api/v1/pods?fieldSelector={NODE_A}")
    assert sorted(p["metadata"]["name"] for p in listing["items"]) == ["a-1", "a-2"]
    everything = await cluster._call("GET", "/api/v1/pods")
    assert len(everything["items"]) == 3


async def test_a_node_agents_watch_gets_only_its_nodes_pods(cluster: FakeCluster) -> None:
    await setup(cluster)
    async with cluster.server.client.get("/api/v1/pods", params={"watch": "true", "fieldSelector": NODE_A},
                                         timeout=aiohttp.ClientTimeout()) as response:
        watch = Watch(response)
        assert sorted([seen(await watch.next()), seen(await watch.next())]) == [("ADDED", "a-1"), ("ADDED", "a-2")]
        await watch.nothing()

        await cluster.set_ready("b-1", True)  # another node's pod changes: not this agent's
        await cluster.create_pod(pod_manifest("b-2", node="node-b"))
        await watch.nothing()

        await cluster.set_ready("a-1", True)
        assert seen(await watch.next()) == ("MODIFIED", "a-1")
        await cluster.create_pod(pod_manifest("a-3", node="node-a"))
        assert seen(await watch.next()) == ("ADDED", "a-3")

        # A pod comes to this node (scheduled) and leaves it: ADDED, then DELETED, as a real
        # API server tells a watch whose selector an object enters or leaves.
        await cluster.create_pod(pod_manifest("c-1", node=""))
        await watch.nothing()
        await cluster.patch_pod("c-1", {"spec": {"nodeName": "node-a"}})
        assert seen(await watch.next()) == ("ADDED", "c-1")
        await cluster.patch_pod("c-1", {"spec": {"nodeName": "node-b"}})
        assert seen(await watch.next()) == ("DELETED", "c-1")

        await cluster.finish_deletion("b-1")
        await cluster.mark_for_deletion("a-2")
        assert seen(await watch.next()) == ("MODIFIED", "a-2")
        await cluster.finish_deletion("a-2")  # kmock: the finalizer's removal, then the deletion
        assert [seen(await watch.next()), seen(await watch.next())] == [("MODIFIED", "a-2"), ("DELETED", "a-2")]
        await watch.nothing()


def test_field_selector_terms() -> None:
    pod = {"metadata": {"namespace": "default"}, "spec": {"nodeName": "node-a"}, "status": {"phase": "Running"}}
    assert field_selector("spec.nodeName=node-a")(pod)
    assert field_selector("spec.nodeName==node-a,status.phase!=Failed")(pod)
    assert not field_selector("spec.nodeName=node-a,metadata.namespace!=default")(pod)
    assert field_selector("spec.schedulerName=")(pod)  # a missing field is ""
    assert not field_selector("spec.nodeName=node-b")(pod)


async def test_the_emulator_keeps_only_requests_in_flight_and_a_bounded_log(
    kmock: Emulator, cluster: FakeCluster,
) -> None:
    await setup(cluster)
    for i in range(KEPT_REQUESTS + 20):
        await cluster.set_ready("a-1", i % 2 == 0)
    assert list(kmock) == []  # what kmock's matching iterates: nothing once served
    assert all(not payload._requests for payload in kmock._payloads)
    assert len(kmock.served) == KEPT_REQUESTS
    assert kmock.served[-1].method.value.upper() == "PATCH"
