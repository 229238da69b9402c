"""flock-cni against hostile or odd input (issue 8): bounded ADDs, nothing left half-done,
no pod holding up the others, and the spec's rules for the runtime's environment."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time

import pytest

from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import CniNode, node_veths
from tests.support.netns import sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]

MAX_ANYCAST_PER_POD = 32  # the agent's default maxAnycastPerPod


def anycast_on_lo(netns: str) -> list[str]:
    """The pool addresses on a pod's lo (198.51.100.0/24, 2001:db8:100::/64)."""
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", "lo", netns=netns))
    pools = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64"))
    return [a["local"] for link in shown for a in link["addr_info"]
            if any(ipaddress.ip_address(a["local"]) in pool for pool in pools
                   if pool.version == ipaddress.ip_address(a["local"]).version)]


def short_ipv6_annotation(size: int) -> tuple[str, list[str]]:
    """As many distinct valid in-pool IPv6 addresses as fit ``size`` bytes: (value, addresses)."""
    addresses: list[str] = []
    length = 0
    for i in range(1, 1 << 20):
        address = f"2001:db8:100::{i:x}"
        if length + len(address) + 1 > size:
            break
        addresses.append(address)
        length += len(address) + 1
    return " ".join(addresses), addresses


async def add_pod(node: CniNode, name: str, anycast: str) -> tuple[str, str, str]:
    """Create the Pod in the API and a sandbox netns: (uid, netns name, netns path)."""
    created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast=anycast))
    netns, path = node.pod_netns()
    return created["metadata"]["uid"], netns, path


async def quick_add(node: CniNode, name: str, path: str, uid: str) -> None:
    """ADD the pod; it must succeed within generous bounds (bounded work, not 94 s)."""
    started = time.monotonic()
    result = await node.cni("ADD", name, path, pod=name, uid=uid)
    took = time.monotonic() - started
    assert result.code == 0, result.raw
    assert took < 10, f"the ADD took {took:.1f}s"


async def test_an_annotation_of_hundreds_of_valid_ips_gives_a_quick_add_of_max_anycast_per_pod(
        cni_node: CniNode) -> None:
    node = cni_node
    annotation, addresses = short_ipv6_annotation(4096)
    assert len(addresses) > 200 and len(annotation.encode()) <= 4096
    uid, netns, path = await add_pod(node, "many", annotation)
    await quick_add(node, "many", path, uid)
    assert sorted(anycast_on_lo(netns)) == sorted(addresses[:MAX_ANYCAST_PER_POD])  # the first ones given
    await eventually(lambda: any(e["involvedObject"]["name"] == "many"
                                 for e in node.cluster.events("AnycastRejected")),
                     within=15, what="an AnycastRejected Event on the pod for the addresses left out")
    assert (await node.cni("CHECK", "many", path, pod="many")).code == 0


async def test_a_60_kb_annotation_gives_a_quick_add_with_no_anycast(cni_node: CniNode) -> None:
    node = cni_node
    annotation, _ = short_ipv6_annotation(60_000)
    uid, netns, path = await add_pod(node, "huge", annotation)
    await quick_add(node, "huge", path, uid)
    assert anycast_on_lo(netns) == []


async def test_an_add_that_fails_midway_leaves_no_veth_record_or_address(cni_node: CniNode) -> None:
    """IPv6 disabled on the pod's lo: its IPv4 anycast address is written, the IPv6 one is
    refused. The failed ADD must take the IPv4 one back too."""
    node = cni_node
    uid, netns, path = await add_pod(node, "broken", "198.51.100.30 2001:db8:100::30")
    sh("sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1", netns=netns)

    failed = await node.cni("ADD", "broken", path, pod="broken", uid=uid)
    assert failed.code != 0 and failed.output["code"] == 5, failed.raw
    assert anycast_on_lo(netns) == []
    assert node_veths(node.netns) == set()
    assert node.records() == []
    assert "2001:db8:100::30" in failed.output["msg"], "the error names the address refused"

    # The runtime retries into the same sandbox once it can work: nothing left in the way.
    sh("sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0", netns=netns)
    retried = await node.cni("ADD", "broken", path, pod="broken", uid=uid)
    assert retried.code == 0, retried.raw
    assert sorted(anycast_on_lo(netns)) == ["198.51.100.30", "2001:db8:100::30"]


async def test_a_slow_api_read_for_one_pod_does_not_hold_up_another_pods_add(cni_node: CniNode) -> None:
    node = cni_node
    api_open, asked = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        asked.set()
        await api_open.wait()  # then the emulator answers (404: the pod does not exist)

    # "slow" is in no watch cache: its ADD reads it from the API, which does not answer yet.
    node.cluster.api["get /api/v1/namespaces/default/pods/slow"] << hold
    _, slow_path = node.pod_netns()
    slow = asyncio.create_task(node.cni("ADD", "slow", slow_path, pod="slow"))
    try:
        await asyncio.wait_for(asked.wait(), timeout=30)  # the slow ADD is waiting for the API
        assert not slow.done()
        uid, _, path = await add_pod(node, "quick", "198.51.100.31")
        started = time.monotonic()
        quick = await node.cni("ADD", "quick", path, pod="quick", uid=uid)
        took = time.monotonic() - started
        assert quick.code == 0, quick.raw
        assert took < 5, f"the other pod's ADD waited {took:.1f}s"
        assert not slow.done(), "the slow ADD must still be waiting for the API"
    finally:
        api_open.set()
        result = await slow
    assert result.code == 0, result.raw


async def test_a_network_config_over_the_limit_is_refused_for_good_by_the_plugin(cni_node: CniNode) -> None:
    node = cni_node
    _, path = node.pod_netns()
    padding = "x" * (17 * 1024 * 1024)
    config = json.dumps({**node.net_config, "padding": padding})
    started = time.monotonic()
    result = await node.cni("ADD", "big-stdin", path, pod="big-stdin", config=config)
    took = time.monotonic() - started
    assert result.code != 0 and result.output["code"] == 7, result.raw[:500]  # invalid network config
    assert "over" in result.output["msg"]
    assert took < 10, f"the plugin took {took:.1f}s"
    assert "bad request on the CNI socket" not in node.agent.log(), "the agent was never asked"
    assert (await node.cni("ADD", "after", path, pod="after")).code == 0


async def test_a_repeated_add_with_another_interface_name_is_an_error_naming_the_one_it_has(
        cni_node: CniNode) -> None:
    node = cni_node
    _, path = node.pod_netns()
    first = await node.cni("ADD", "twice", path, pod="twice")
    assert first.code == 0, first.raw
    again = await node.cni("ADD", "twice", path, pod="twice")
    assert again.code == 0 and again.output["ips"] == first.output["ips"], again.raw

    other = await node.cni("ADD", "twice", path, pod="twice", ifname="eth1")
    assert other.code != 0 and other.output["code"] == 4, other.raw
    assert "eth0" in other.output["msg"] and "eth1" in other.output["msg"]
    assert (await node.cni("CHECK", "twice", path, pod="twice")).code == 0, "the network is untouched"


@pytest.mark.parametrize(("variable", "value"), [
    ("CNI_IFNAME", ".."),
    ("CNI_IFNAME", "."),
    ("CNI_IFNAME", "eth 0"),
    ("CNI_IFNAME", "a-name-of-16-chr"),
    ("CNI_CONTAINERID", "c" * 300),
    ("CNI_CONTAINERID", "-starts-with-a-dash"),
    ("CNI_CONTAINERID", "has/a/slash"),
])
async def test_an_environment_against_the_specs_rules_gets_code_4_and_changes_nothing(
        cni_node: CniNode, variable: str, value: str) -> None:
    node = cni_node
    netns, path = node.pod_netns()
    result = await node.cni("ADD", "spec-rules", path, pod="spec-rules", extra_env={variable: value})
    assert result.code != 0 and result.output["code"] == 4, result.raw
    assert variable in result.output["msg"]
    assert node_veths(node.netns) == set() and node.records() == []
    links = json.loads(sh("ip", "-j", "link", "show", netns=netns))
    assert [link["ifname"] for link in links] == ["lo"]

