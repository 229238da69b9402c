"""The lab report's split of a withdrawal: API (PATCH sent -> event on the agent's watch),
then from that event to the node's route change and to the ToR's."""

from __future__ import annotations

import types
from typing import Any, cast

from flock.lab.kubelet import LabPod
from flock.lab.report import render, share_figures
from flock.lab.scenario import shares
from flock.lab.topology import Node


def lab_pod(**times: float | None) -> LabPod:
    node = cast(Node, types.SimpleNamespace(spec=types.SimpleNamespace(name="node-a")))
    pod = LabPod("web-0-1", "uid", node, "flk-lab-x-web-0-1", "ctr")
    for key, value in times.items():
        setattr(pod, key, value)
    return pod


def delivery(at: float, name: str = "web-0-1", node: str = "node-a") -> dict[str, Any]:
    return {"at": at, "watch": f"spec.nodeName={node}", "type": "MODIFIED", "name": name, "deleting": True}


def test_flocks_rule_the_deletion_event_starts_the_agents_share() -> None:
    pod = lab_pod(marked_for_deletion=10.0)
    seen = [delivery(9.0), delivery(10.004), delivery(10.0045, node="node-b"), delivery(10.001, name="web-1-1"),
            delivery(13.0)]
    split = shares(pod, seen, node_at=10.020, tor_at=10.030)
    assert round(split["apiSeconds"] or 0, 4) == 0.004
    assert round(split["nodeSeconds"] or 0, 4) == 0.016
    assert round(split["torSeconds"] or 0, 4) == 0.026


def test_ready_only_rule_the_not_ready_patch_is_the_one_that_counts() -> None:
    pod = lab_pod(marked_for_deletion=10.0, not_ready_sent=13.0)
    split = shares(pod, [delivery(10.003), delivery(13.002)], node_at=13.010, tor_at=None)
    assert round(split["apiSeconds"] or 0, 4) == 0.002
    assert round(split["nodeSeconds"] or 0, 4) == 0.008
    assert split["torSeconds"] is None


def test_no_route_change_no_split() -> None:
    assert shares(lab_pod(marked_for_deletion=10.0), [delivery(10.003)], node_at=None, tor_at=None) == {
        "apiSeconds": None, "nodeSeconds": None, "torSeconds": None}


def test_shares_are_summarised_and_rendered() -> None:
    pods = [{"name": "web-0-1", "node": "node-a", "where": "node-a drops the next hop", "withdrawalSeconds": 0.02,
             "apiSeconds": 0.004, "nodeSeconds": 0.016, "torSeconds": None}]
    figures = share_figures(pods)
    assert figures["api"] == {"p50": 0.004, "max": 0.004, "count": 1}
    assert figures["tor"] == {"p50": None, "max": None, "count": 0}
    report = {"replicas": 1, "eligibility": "x", "rate": 1.0, "anycast": [], "pods": pods,
              "requests": {"total": 0, "ok": 0, "failed": 0, "failedPercent": 0.0,
                           "failures": dict.fromkeys(("refused", "reset", "timeout", "unreachable", "error"), 0)},
              "latency": {"p50": 0.02, "max": 0.02}, "shares": figures, "torRouteChanges": 0,
              "events": {"byReason": {}, "samples": []}, "attributed": []}
    text = render(report)
    [api_line] = [line for line in text.splitlines() if "API: PATCH sent -> event on the agent's watch" in line]
    assert api_line.endswith("p50    4 ms   max    4 ms"), api_line
