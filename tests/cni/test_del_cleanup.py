"""A pinned pod's DEL through the real agent and kernel: its pin and its slot's conntrack
entries go after the DEL answered, and an agent that stopped in between finishes that at
its next start, while the record keeps the slot and addresses from other pods.

The order (answer first, unpin after) with the unpin held: tests/unit/test_cni_del_cleanup.py;
the DEL's connection count and Event: tests/cni/test_drain_agent.py.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from flock.adapters.pinning import TABLE
from flock.core.pinning import DEFAULT_MARK_MASK, slot_mark
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import ANY_SHARED, CniNode, node_veths
from tests.support.netns import sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]


def pod_slots(netns: str) -> dict[str, int]:
    listing = sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=netns)
    return {name: int(slot) for name, slot in re.findall(r'"(flock[0-9a-f]{8})" : goto save_slot_(\d+)', listing)}


def slot_entries(netns: str, slot: int) -> str:
    """conntrack's entries marked with ``slot`` (``conntrack -L`` prints them, one a line)."""
    mark = f"0x{slot_mark(slot, DEFAULT_MARK_MASK):x}/0x{DEFAULT_MARK_MASK:x}"
    return sh("conntrack", "-L", "-m", mark, netns=netns, check=False)


def record(node: CniNode, container: str) -> dict[str, object] | None:
    return next((r for r in node.records() if r["containerID"] == container), None)


async def _add(node: CniNode, name: str) -> tuple[str, dict[str, object]]:
    created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=ANY_SHARED, ready=True))
    _, path = node.pod_netns()
    result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=created["metadata"]["uid"])
    assert result.code == 0, result.raw
    return path, result.output


async def test_a_start_finishes_a_dels_clean_up_and_keeps_its_slot_and_addresses_till_then(
        cni_node: CniNode) -> None:
    node = cni_node
    web1_path, web1 = await _add(node, "web-1")
    first = record(node, "ctr-web-1")
    assert first is not None and isinstance(first["pinSlot"], int)
    slot = first["pinSlot"]
    veth = web1["interfaces"][0]["name"]  # type: ignore[index]
    # A pinned connection of web-1's, as conntrack holds it.
    sh("conntrack", "-I", "-p", "tcp", "-s", "192.0.2.99", "-d", "198.51.100.10", "--sport", "40001",
       "--dport", "8080", "--state", "ESTABLISHED", "-u", "ASSURED", "-t", "600",
       "-m", str(slot_mark(slot, DEFAULT_MARK_MASK)), netns=node.netns)
    assert "ESTABLISHED" in slot_entries(node.netns, slot)

    # The agent stops just after web-1's DEL answered: veth gone, record unpinning, the pin
    # and the conntrack entry still there.
    node.agent.stop()
    sh("ip", "link", "del", veth, netns=node.netns)
    file = next(p for p in (node.state_dir / "allocations").glob("*.json")
                if json.loads(p.read_text())["containerID"] == "ctr-web-1")
    file.write_text(file.read_text().replace('"committed"', '"unpinning"'))
    assert pod_slots(node.netns) == {veth: slot}

    api_open = asyncio.Event()

    async def hold() -> None:
        await api_open.wait()

    node.cluster.api["get /api/v1/pods"] << hold  # the start-up's LIST waits: recover() does not run yet
    node.agent.start()
    await node.agent.wait_for_passes(2)
    # Start-up took its pin out of the kernel, but kept its record, slot and addresses.
    assert pod_slots(node.netns) == {}
    kept = record(node, "ctr-web-1")
    assert kept is not None and kept["state"] == "unpinning" and kept["pinSlot"] == slot
    assert "ESTABLISHED" in slot_entries(node.netns, slot)
    # So a new pod gets neither web-1's slot nor its addresses, while connections still carry its mark.
    _, web2 = await _add(node, "web-2")
    second = record(node, "ctr-web-2")
    assert second is not None and second["pinSlot"] not in (None, slot)
    assert not set(second["podIPs"]) & set(first["podIPs"])  # type: ignore[call-overload]

    # The LIST answers: start-up is over, the clean-up finished, the slot's entries gone.
    api_open.set()
    await eventually(lambda: record(node, "ctr-web-1") is None, within=30, what="web-1's record gone")
    assert "ESTABLISHED" not in slot_entries(node.netns, slot)
    assert pod_slots(node.netns) == {web2["interfaces"][0]["name"]: second["pinSlot"]}  # type: ignore[index]
    assert "releasing the unfinished clean-up of a DEL container=ctr-web-1" in node.agent.log()
    assert node.cluster.events("AnycastDrained") == [], "the DEL reported it: a start-up does not again"
    # The runtime's DEL, retried: nothing left, success.
    assert (await node.cni("DEL", "ctr-web-1", web1_path, pod="web-1")).code == 0
    assert veth not in node_veths(node.netns)


async def test_a_dels_repeated_at_once_all_succeed_and_unpin_once(cni_node: CniNode) -> None:
    node = cni_node
    path, web1 = await _add(node, "web-1")
    veth = web1["interfaces"][0]["name"]  # type: ignore[index]
    results = [await node.cni("DEL", "ctr-web-1", path, pod="web-1") for _ in range(3)]
    assert [r.code for r in results] == [0, 0, 0], [r.raw for r in results]
    await eventually(lambda: record(node, "ctr-web-1") is None and pod_slots(node.netns) == {}, within=30,
                     what="web-1 unpinned and its record gone")
    assert veth not in node_veths(node.netns)
    assert node.agent.log().count("pod unpinned and forgotten pod=default/web-1") == 1
    assert node.agent.log().count("pod unplumbed pod=default/web-1") == 1
