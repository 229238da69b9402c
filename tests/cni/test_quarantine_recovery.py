"""A damaged allocation record is moved aside at start-up: its pod keeps its network.

The agent rebuilds the record from the kernel (the pod's veth, its routes) and what the
damaged file still says, so the pod stays in its anycast routes, its addresses and veth
are given to no one else, and a DEL of its container cleans up as usual.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import urllib.request

import pytest
import yaml

from tests.cni.conftest import ANY_SHARED, CniNode, node_anycast, node_veths
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.netlink_monitor import watch_routes

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

SHARED_PREFIXES = ("198.51.100.10/32", "2001:db8:100::10/128")


def state_dir(node: CniNode) -> pathlib.Path:
    return node.agent.workdir / "state"


def record_of(node: CniNode, container: str) -> dict[str, object] | None:
    path = state_dir(node) / "allocations" / f"{container}.json"
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


async def passes(node: CniNode) -> int:
    """Reconcile passes the running agent has finished (its /metrics)."""
    listen = yaml.safe_load(node.agent.config_path.read_text())["listen"]

    def read() -> str:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as answer:
            return answer.read().decode()
    try:
        text = await asyncio.to_thread(read)
    except OSError:
        return 0
    return int(sum(float(v) for v in re.findall(r"^flock_reconcile_passes_total\{.*\} (\S+)$", text, re.M)))


async def wait_for_passes(node: CniNode, count: int) -> None:
    for _ in range(600):
        if await passes(node) >= count:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"the agent did not finish {count} reconcile passes within 60s")


async def add_shared_pods(node: CniNode, names: tuple[str, ...]) -> dict[str, tuple[str, dict[str, object], str]]:
    """Ready pods sharing ANY_SHARED, ADDed: name -> (netns path, ADD result, uid)."""
    pods = {}
    for name in names:
        created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=ANY_SHARED, ready=True))
        uid = created["metadata"]["uid"]
        _, path = node.pod_netns()
        result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=uid)
        assert result.code == 0, result.raw
        pods[name] = (path, result.output, uid)
    for prefix in SHARED_PREFIXES:
        await eventually(lambda p=prefix: len(node_anycast(node.netns, p)) == len(names), within=30,
                         what=f"{prefix} with {len(names)} next hops")
    return pods


def ips_of(result: dict[str, object]) -> set[str]:
    return {ip["address"].split("/")[0] for ip in result["ips"]}  # type: ignore[attr-defined]


async def test_a_pod_whose_record_was_quarantined_keeps_its_routes_addresses_and_veth(cni_node: CniNode) -> None:
    node = cni_node
    pods = await add_shared_pods(node, ("web-1", "web-2"))
    web1_path, web1_result, web1_uid = pods["web-1"]
    web1_veth = web1_result["interfaces"][0]["name"]  # type: ignore[index]
    routes_before = {prefix: node_anycast(node.netns, prefix) for prefix in SHARED_PREFIXES}

    node.agent.stop()
    record = state_dir(node) / "allocations" / "ctr-web-1.json"
    text = record.read_text()
    record.write_text(text[:text.index('"podIPs"') + 15])  # cut short in the middle of its addresses

    with watch_routes(node.netns, links=True) as seen:
        node.agent.start()
        await eventually(lambda: node.cluster.events("AllocationQuarantined"), within=60,
                         what="the damaged record is quarantined")
        await wait_for_passes(node, 4)
        await eventually(lambda: node.cluster.events("AllocationRecovered"), within=30,
                         what="an AllocationRecovered Event")
    touched = [str(c) for c in seen.seen if c.prefix in (*SHARED_PREFIXES, web1_veth)]
    assert touched == [], f"web-1 left its route or lost its veth at the restart: {touched}"
    assert {prefix: node_anycast(node.netns, prefix) for prefix in SHARED_PREFIXES} == routes_before

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
    assert record_of(node, "ctr-web-1") is None
    web2_veth = pods["web-2"][1]["interfaces"][0]["name"]  # type: ignore[index]
    for prefix in SHARED_PREFIXES:
        assert [dev for _, dev in node_anycast(node.netns, prefix)] == [web2_veth]


async def test_a_veth_without_any_record_keeps_its_addresses_until_its_del(cni_node: CniNode) -> None:
    """A record lost altogether (no quarantined file to name the pod): the veth's
    addresses stay reserved, a Node Event says so, and the runtime's DEL of the
    container releases them."""
    node = cni_node
    pods = await add_shared_pods(node, ("web-1",))
    web1_path, web1_result, _ = pods["web-1"]
    web1_veth = web1_result["interfaces"][0]["name"]  # type: ignore[index]

    node.agent.stop()
    (state_dir(node) / "allocations" / "ctr-web-1.json").unlink()
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
    assert record_of(node, placeholder) is None and web1_veth not in node_veths(node.netns)

    # (A sandbox torn down without a DEL: the placeholder is released at a later start once
    # the veth is gone; tests/unit/test_recovery.py.)
