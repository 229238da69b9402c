"""Drain you can see through the real agent and flock-cni: a pinned pod's connection is
counted in flock_pinned_connections, and its DEL with the connection still open posts
an AnycastDrained Event saying it was cut; the pod's series goes with it.

The drain that ends by itself (a terminating pod's last connection closing) is
tests/kernel/test_drain.py; the counting rules and wording are tests/unit/test_drain.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import CniNode
from tests.support.flows import EchoServers, long_lived_tcp
from tests.support.netns import sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

ANYCAST = "198.51.100.10"


def pinned_connections(node: CniNode) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^flock_pinned_connections\{namespace="default",pod="([^"]+)"\} (\S+)$', node.agent.metrics(), re.M)}


async def test_a_del_with_an_open_pinned_connection_says_it_was_cut(cni_node: CniNode) -> None:
    node = cni_node
    created = await node.cluster.create_pod(pod_manifest("web-1", node="node-a", anycast=ANYCAST, ready=True))
    pod_netns, path = node.pod_netns()
    added = await node.cni("ADD", "ctr-web-1", path, pod="web-1", uid=created["metadata"]["uid"])
    assert added.code == 0, added.raw
    await eventually(lambda: pinned_connections(node).get("web-1") == 0.0, within=30,
                     what="web-1's flock_pinned_connections series")
    await eventually(lambda: ANYCAST in sh("ip", "route", "show", ANYCAST, netns=node.netns), within=30,
                     what="the anycast route to web-1")

    servers = EchoServers()
    stop = asyncio.Event()
    try:
        await servers.start("web-1", pod_netns, [ANYCAST])
        # A client on the node itself (pinned in the output hook): one connection to web-1.
        flow = asyncio.create_task(long_lived_tcp(node.netns, ANYCAST, stop))
        await asyncio.sleep(0.5)
        assert not flow.done(), flow.result()
        # web-1 terminates: counted every tick from now on.
        await node.cluster.mark_for_deletion("web-1")
        await eventually(lambda: pinned_connections(node).get("web-1") == 1.0, within=30,
                         what="web-1's connection counted")
        assert node.cluster.events("AnycastDrained") == []

        assert (await node.cni("DEL", "ctr-web-1", path, pod="web-1")).code == 0
        await eventually(lambda: node.cluster.events("AnycastDrained") != [], within=30,
                         what="the AnycastDrained Event")
        [event] = node.cluster.events("AnycastDrained")
        assert event["type"] == "Normal" and event["involvedObject"]["name"] == "web-1"
        assert event["message"] == ("1 pinned connection was still open when the pod's network was removed "
                                    "from node-a: cut, not drained")
        assert "web-1" not in pinned_connections(node)
        assert "pinned connections cut pod=default/web-1 open=1" in node.agent.log()
    finally:
        stop.set()
        await servers.close()
        await asyncio.wait_for(flow, 10)
