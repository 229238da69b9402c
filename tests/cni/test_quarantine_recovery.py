"""A damaged allocation record is moved aside at start-up: its pod keeps its network.

The agent rebuilds the record from the kernel (the pod's veth, its routes) and what the
damaged file still says, so the pod stays in its anycast routes, its addresses and veth
are given to no one else, and a DEL of its container cleans up as usual.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import ANY_SHARED, CniNode, node_veths
from tests.support.netlink_monitor import watch_routes
from tests.support.routes import next_hops

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

SHARED_PREFIXES = ("198.51.100.10/32", "2001:db8:100::10/128")


def record_of(node: CniNode, container: str) -> dict[str, Any] | None:
    path = node.state_dir / "allocations" / f"{container}.json"
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record


async def add_shared_pods(node: CniNode, names: tuple[str, ...]) -> dict[str, tuple[str, dict[str, Any], str]]:
    """Ready pods sharing ANY_SHARED, ADDed: name -> (netns path, ADD result, uid)."""
    pods: dict[str, tuple[str, dict[str, Any], str]] = {}
    for name in names:
        created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=ANY_SHARED, ready=True))
        uid = created["metadata"]["uid"]
        _, path = node.pod_netns()
        result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=uid)
        assert result.code == 0, result.raw
        pods[name] = (path, result.output, uid)
    for prefix in SHARED_PREFIXES:
        await eventually(lambda: len(next_hops(node.netns, prefix)) == len(names), within=30,  # noqa: B023 (awaited here)
                         what=f"{prefix} with {len(names)} next hops")
    return pods


def ips_of(result: dict[str, Any]) -> set[str]:
    return {ip["address"].split("/")[0] for ip in result["ips"]}


async def test_a_pod_whose_record_was_quarantined_keeps_its_routes_addresses_and_veth(cni_node: CniNode) -> None:
    node = cni_node
    pods = await add_shared_pods(node, ("web-1", "web-2"))
    web1_path, web1_result, web1_uid = pods["web-1"]
    web1_veth = web1_result["interfaces"][0]["name"]
    routes_before = {prefix: next_hops(node.netns, prefix) for prefix in SHARED_PREFIXES}

    node.agent.stop()
    record = node.state_dir / "allocations" / "ctr-web-1.json"
    text = record.read_text()
    record.write_text(text[:text.index('"podIPs"') + 15])  # cut short in the middle of its addresses

    with watch_routes(node.netns, links=True) as seen:
        node.agent.start()
        await eventually(lambda: node.cluster.events("AllocationQuarantined"), within=60,
                         what="the damaged record is quarantined")
        await node.agent.wait_for_passes(4)
        await eventually(lambda: node.cluster.events("AllocationRecovered"), within=30,
                         what="an AllocationRecovered Event")
    touched = [str(c) for c in seen.seen if c.prefix in (*SHARED_PREFIXES, web1_veth)]
    assert touched == [], f"web-1 left its route or lost its veth at the restart: {touched}"
    assert {prefix: next_hops(node.netns, prefix) for prefix in SHARED_PREFIXES} == routes_before

    [event] = node.cluster.events("AllocationRecovered")
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == "web-1"
    assert event["involvedObject"]["uid"] == web1_uid
    assert web1_veth in event["message"] and all(ip in event["message"] for ip in ips_of(web1_result))
    rebuilt = record_of(node, "ctr-web-1")
    assert rebuilt is not None and rebuilt["state"] == "committed" and rebuilt["hostIfname"] == web1_veth

    # A new pod gets other addresses, and its ADD succeeds (no "File exists").
    _, web3_path = node.pod_netns()
    web3 = await node.cni("ADD", "ctr-web-3", web3_path, pod="web-3")
    assert web3.code == 0, web3.raw
    assert not ips_of(web3.output) & ips_of(web1_result)
    assert (await node.cni("CHECK", "ctr-web-1", web1_path, pod="web-1", uid=web1_uid)).code == 0

    # The kubelet's DEL of the recovered container cleans up as for any other.
    deleted = await node.cni("DEL", "ctr-web-1", web1_path, pod="web-1", uid=web1_uid)
    assert deleted.code == 0, deleted.raw
    assert web1_veth not in node_veths(node.netns)
    # Its record goes once its pin has (just after the answer).
    await eventually(lambda: record_of(node, "ctr-web-1") is None, within=30, what="web-1's record gone")
    web2_veth = pods["web-2"][1]["interfaces"][0]["name"]
    for prefix in SHARED_PREFIXES:
        assert [dev for _, dev in next_hops(node.netns, prefix)] == [web2_veth]


async def test_a_veth_without_any_record_keeps_its_addresses_until_its_del(cni_node: CniNode) -> None:
    """A record lost altogether (no quarantined file to name the pod): the veth's
    addresses stay reserved, a Node Event says so, and the runtime's DEL of the
    container releases them."""
    node = cni_node
    pods = await add_shared_pods(node, ("web-1",))
    web1_path, web1_result, _ = pods["web-1"]
    web1_veth = web1_result["interfaces"][0]["name"]

    node.agent.stop()
    (node.state_dir / "allocations" / "ctr-web-1.json").unlink()
    node.agent.start()
    placeholder = f"recovered-{web1_veth}"
    await eventually(lambda: record_of(node, placeholder) is not None, within=60,
                     what="a placeholder record for the veth")
    await eventually(lambda: node.cluster.events("AllocationRecovered"), within=30,
                     what="an AllocationRecovered Event")
    [event] = node.cluster.events("AllocationRecovered")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Node"
    assert web1_veth in event["message"]

    _, web2_path = node.pod_netns()
    web2 = await node.cni("ADD", "ctr-web-2", web2_path, pod="web-2")
    assert web2.code == 0, web2.raw
    assert not ips_of(web2.output) & ips_of(web1_result)

    # The runtime's DEL of the real container releases its placeholder (and the veth).
    deleted = await node.cni("DEL", "ctr-web-1", web1_path, pod="web-1")
    assert deleted.code == 0, deleted.raw
    assert web1_veth not in node_veths(node.netns)
    await eventually(lambda: record_of(node, placeholder) is None, within=30, what="the placeholder gone")

    # (A sandbox torn down without a DEL: the placeholder is released at a later start once
    # the veth is gone; tests/unit/test_recovery.py.)
