"""Pods that write hostile or broken flock.io/anycast values cannot hurt the node.

Through the public interfaces: flock-cni exec'd as a runtime does, a real agent process,
the (emulated) API server's Events, the agent's log and /healthz.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import CniNode
from tests.support.netns import sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow]


def pod_events(node: CniNode, reason: str, pod: str) -> list[dict[str, Any]]:
    return [e for e in node.cluster.events(reason) if e["involvedObject"]["name"] == pod]


async def test_a_typo_a_hijack_and_a_zone_id_give_one_warning_and_the_pod_starts_with_the_rest(
    cni_node: CniNode,
) -> None:
    node = cni_node
    annotation = "198.51.100.19, 8.8.8.8, bogus, 2001:db8:100::20%eth0, 2001:db8:100::21"
    created = await node.cluster.create_pod(pod_manifest("mixed", node="node-a", anycast=annotation, ready=True))
    netns, path = node.pod_netns()
    result = await node.cni("ADD", "mixed", path, pod="mixed", uid=created["metadata"]["uid"])
    assert result.code == 0, result.raw
    lo = sh("ip", "-br", "addr", "show", "dev", "lo", netns=netns)
    assert "198.51.100.19/32" in lo and "2001:db8:100::21/128" in lo
    assert "8.8.8.8" not in lo and "2001:db8:100::20" not in lo

    await eventually(lambda: len(pod_events(node, "AnycastRejected", "mixed")) == 1, within=15,
                     what="one AnycastRejected Event on the pod")
    message = str(pod_events(node, "AnycastRejected", "mixed")[0]["message"])
    assert message.startswith("3 problems: "), message
    for said in ("'bogus' is not an IP address", "'2001:db8:100::20%eth0' has a zone index",
                 "8.8.8.8 is outside the anycast pools"):
        assert said in message, message
    await node.agent.wait_for_passes(4)  # four more passes: still one Event
    assert len(pod_events(node, "AnycastRejected", "mixed")) == 1
    assert node.agent.alive()


async def test_ten_thousand_junk_tokens_on_a_running_pod_give_one_warning_and_bounded_logs(
    cni_node: CniNode,
) -> None:
    node = cni_node
    created = await node.cluster.create_pod(pod_manifest("junk", node="node-a", anycast="198.51.100.30", ready=True))
    _, path = node.pod_netns()
    assert (await node.cni("ADD", "junk", path, pod="junk", uid=created["metadata"]["uid"])).code == 0
    await eventually(lambda: len(pod_events(node, "AnycastAdvertised", "junk")) == 1, within=15,
                     what="the pod's anycast IP advertised")
    log_before = len(node.agent.log())

    junk = " ".join(f"junk{i}" for i in range(10_000))  # 98 KB
    await node.cluster.patch_pod("junk", {"metadata": {"annotations": {"flock.io/anycast": junk}}})
    await eventually(lambda: len(pod_events(node, "AnycastRejected", "junk")) == 1, within=15,
                     what="one AnycastRejected Event")
    message = str(pod_events(node, "AnycastRejected", "junk")[0]["message"])
    assert "over the limit of 4096" in message and len(message) < 400, message
    # A shorter one that is read: every bad entry counted, the first few named.
    junk = " ".join(f"j{i}" for i in range(1300))[:4000]
    await node.cluster.patch_pod("junk", {"metadata": {"annotations": {"flock.io/anycast": junk}}})
    await eventually(lambda: len(pod_events(node, "AnycastRejected", "junk")) == 2, within=15,
                     what="a second AnycastRejected Event for the new value")
    message = str(pod_events(node, "AnycastRejected", "junk")[-1]["message"])
    counted = re.match(r"^(\d+) problems: flock\.io/anycast: 'j0' is not an IP address", message)
    assert counted is not None and int(counted[1]) == len(junk.split()), message
    assert "last annotation that parsed" in message and len(message) < 600

    for _ in range(6):  # a dozen passes
        assert node.agent.http_status("/healthz") == 200
        await node.agent.wait_for_passes(2)
    assert len(pod_events(node, "AnycastRejected", "junk")) == 2, "not one per pass or per token"
    assert pod_events(node, "AnycastWithdrawn", "junk") == [], "a broken annotation withdraws nothing"
    log = node.agent.log()[log_before:]
    assert len(log) < 20_000, f"{len(log)} bytes of log for two edits"
    assert max(len(line) for line in log.splitlines()) < 2_000
    assert log.count("anycast not routed pod=default/junk") == 2


async def test_a_restarted_agent_says_nothing_about_the_pods_own_routes(cni_node: CniNode) -> None:
    node = cni_node
    for name in ("quiet-1", "quiet-2"):
        created = await node.cluster.create_pod(pod_manifest(name, node="node-a", anycast="198.51.100.40"))
        _, path = node.pod_netns()
        assert (await node.cni("ADD", name, path, pod=name, uid=created["metadata"]["uid"])).code == 0
    node.agent.stop()
    log_before = len(node.agent.log())
    node.agent.start()
    await eventually(lambda: "agent started" in node.agent.log()[log_before:], within=30, what="the agent restarted")
    await node.agent.wait_for_passes(3)  # passes with a full kernel view
    log = node.agent.log()[log_before:]
    assert "ignored a route" not in log, log


async def test_a_pod_that_keeps_changing_its_annotation_gets_counted_events_and_is_capped(
    cni_node: CniNode,
) -> None:
    # kubelet's correlator, in the agent's Event sink: identical Events raise the count of
    # the first; at most 25 per object, then one per 5 minutes.
    node = cni_node
    created = await node.cluster.create_pod(pod_manifest("flappy", node="node-a", anycast="198.51.100.31"))
    _, path = node.pod_netns()
    assert (await node.cni("ADD", "flappy", path, pod="flappy", uid=created["metadata"]["uid"])).code == 0
    for i in range(32):  # two typos, alternating, each seen by a pass
        await node.cluster.patch_pod("flappy", {"metadata": {"annotations": {
            "flock.io/anycast": f"198.51.100.31, typo-{i % 2}"}}})
        await node.agent.wait_for_passes(2)
    rejected = pod_events(node, "AnycastRejected", "flappy")
    assert len(rejected) == 2, "two distinct Events, counted, not 32 objects"
    counts = sorted(int(e["count"]) for e in rejected)
    assert 20 <= sum(counts) <= 25, counts  # capped at the burst
    log = node.agent.log()
    assert log.count("too many events about Pod default/flappy") == 1, "a dropped run is logged once"
