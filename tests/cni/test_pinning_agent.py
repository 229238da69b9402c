"""Connection pinning through the real agent and flock-cni: ADD pins, a restart adopts, DEL unpins.

The datapath itself (flows kept through a next hop's removal) is tests/kernel/test_pinning.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from flock.adapters.pinning import TABLE
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import ANY_SHARED, CniNode
from tests.support.netns import sh
from tests.support.pin_monitor import watch_pinning

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]


def pod_slots(netns: str) -> dict[str, int]:
    """The ``pod_slot`` map of flock's table: veth -> slot."""
    listing = sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=netns)
    return {name: int(slot) for name, slot in re.findall(r'"(flock[0-9a-f]{8})" : goto save_slot_(\d+)', listing)}


def pin_rules(netns: str) -> list[str]:
    return [line.strip() for family in ("-4", "-6")
            for line in sh("ip", family, "rule", "show", "pref", "1000", netns=netns).splitlines()]


def pinned_metric(node: CniNode) -> float:
    found = re.search(r"^flock_pinned_pods (\S+)$", node.agent.metrics(), re.M)
    assert found is not None
    return float(found[1])


async def _add(node: CniNode, name: str, anycast: str) -> tuple[str, dict[str, Any]]:
    created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=anycast))
    _, path = node.pod_netns()
    result = await node.cni("ADD", f"ctr-{name}", path, pod=name, uid=created["metadata"]["uid"])
    assert result.code == 0, result.raw
    return path, result.output


async def test_add_pins_a_pod_restart_adopts_without_a_write_and_del_unpins(cni_node: CniNode) -> None:
    node = cni_node
    web1_path, web1 = await _add(node, "web-1", ANY_SHARED)
    web2_path, web2 = await _add(node, "web-2", ANY_SHARED)
    plain_path, plain = await _add(node, "plain", "")  # no anycast IPs: nothing to pin
    veths = {name: out["interfaces"][0]["name"] for name, out in (("web-1", web1), ("web-2", web2),
                                                                   ("plain", plain))}
    slots = pod_slots(node.netns)
    assert set(slots) == {veths["web-1"], veths["web-2"]}, slots
    records = {r["containerID"]: r for r in node.records()}
    assert records["ctr-web-1"]["pinSlot"] == slots[veths["web-1"]]
    assert "pinSlot" not in records["ctr-plain"]
    assert len(pin_rules(node.netns)) == 4  # two pods, IPv4 and IPv6
    table = 1_000_000 + slots[veths["web-1"]]
    web1_v4 = web1["ips"][0]["address"].split("/")[0]
    assert sh("ip", "route", "show", "table", str(table), netns=node.netns).split()[:5] == [
        "198.51.100.0/24", "via", web1_v4, "dev", veths["web-1"]]
    rp_filter = sh("sysctl", "-n", f"net.ipv4.conf.{veths['web-1']}.rp_filter", netns=node.netns)
    assert rp_filter.strip() == "2"
    assert pinned_metric(node) == 2
    assert "pod pinned pod=default/web-1" in node.agent.log()

    # A restart with nothing changed: no route, rule or nftables write at all.
    node.agent.stop()
    with watch_pinning(node.netns, settle=1.0) as seen:
        node.agent.start()
        await node.agent.wait_for_passes(3)
    assert seen.writes == [], f"the restart rewrote pinning: {seen.writes}"
    assert pod_slots(node.netns) == slots
    assert pinned_metric(node) == 2

    # A restart of an agent whose records predate pinning: the slots come from the kernel.
    node.agent.stop()
    for file in (node.state_dir / "allocations").glob("*.json"):
        record = json.loads(file.read_text())
        record.pop("pinSlot", None)
        file.write_text(json.dumps(record))
    with watch_pinning(node.netns, settle=1.0) as seen:
        node.agent.start()
        await node.agent.wait_for_passes(3)
    assert seen.writes == [], f"adopting slots from the kernel rewrote pinning: {seen.writes}"
    records = {r["containerID"]: r for r in node.records()}
    assert records["ctr-web-2"]["pinSlot"] == slots[veths["web-2"]]

    # DEL: the pod's element, rules and table go with its network (just after the DEL answered).
    assert (await node.cni("DEL", "ctr-web-1", web1_path, pod="web-1")).code == 0
    assert pinned_metric(node) == 1
    await eventually(lambda: set(pod_slots(node.netns)) == {veths["web-2"]}, within=30, what="web-1's element gone")
    await eventually(lambda: len(pin_rules(node.netns)) == 2, within=30, what="web-1's rules gone")
    assert sh("ip", "route", "show", "table", str(table), netns=node.netns) == ""
    for name, path in (("web-2", web2_path), ("plain", plain_path)):
        assert (await node.cni("DEL", f"ctr-{name}", path, pod=name)).code == 0
    await eventually(lambda: pod_slots(node.netns) == {} and pin_rules(node.netns) == [], within=30,
                     what="every pin gone")
    await eventually(lambda: node.records() == [], within=30, what="every record gone")


@pytest.mark.parametrize("cni_node", [{"datapath": {"connectionPinning": False}}], indirect=True)
async def test_with_pinning_off_nothing_is_pinned(cni_node: CniNode) -> None:
    node = cni_node
    await _add(node, "web-1", ANY_SHARED)
    assert TABLE not in sh("nft", "list", "tables", netns=node.netns)
    assert pin_rules(node.netns) == []
    assert "pinSlot" not in node.records()[0]
    assert pinned_metric(node) == 0


@pytest.mark.parametrize("cni_node", [{"resyncSeconds": 1}], indirect=True)
async def test_a_pin_the_kernel_lost_is_put_back(cni_node: CniNode) -> None:
    """Someone deletes a pinned pod's rule and its map element (or the whole table): the
    agent puts them back within resyncSeconds, as it repairs routes."""
    node = cni_node
    _, web1 = await _add(node, "web-1", ANY_SHARED)
    veth = web1["interfaces"][0]["name"]
    slots, rules = pod_slots(node.netns), pin_rules(node.netns)
    assert set(slots) == {veth} and len(rules) == 2
    mark = f"0x{slots[veth] << 20:x}/0xff00000"
    sh("ip", "-4", "rule", "del", "pref", "1000", "fwmark", mark, netns=node.netns)
    sh("nft", "delete", "element", "inet", TABLE, "pod_slot", f'{{ "{veth}" }}', netns=node.netns)
    assert pod_slots(node.netns) == {} and len(pin_rules(node.netns)) == 1
    await eventually(lambda: pod_slots(node.netns) == slots and sorted(pin_rules(node.netns)) == sorted(rules),
                     within=15, what=f"the pin put back\n{node.agent.log()}")
    assert "connection pinning repaired what the kernel had lost pods=1" in node.agent.log()

    sh("nft", "delete", "table", "inet", TABLE, netns=node.netns)

    def table_back() -> bool:
        listing = sh("nft", "list", "map", "inet", TABLE, "pod_slot", netns=node.netns, check=False)
        return f'"{veth}" : goto save_slot_{slots[veth]}' in listing

    await eventually(table_back, within=15, what=f"the table put back\n{node.agent.log()}")
