"""The lab report's long-lived connections: how each ended, and why a broken one broke."""

from __future__ import annotations

from typing import Any

from flock.lab.report import (
    attribute,
    long_lived_cause,
    long_lived_figures,
    phase_figures,
    reaching_changes,
    render_compare,
    render_long_lived,
    render_phases,
)
from flock.lab.scenario import PINNED, PLAIN, variants

V4, V6 = "198.51.100.10/32", "2001:db8:100::10/128"
TOR_A, TOR_B = "via 192.0.2.2 dev fl0", "via 192.0.2.6 dev fl1"
POD_A0, POD_A1, POD_B0 = "via 203.0.113.2 dev ", "via 203.0.113.3 dev ", "via 203.0.113.66 dev "


def pod(name: str, node: str, node_hop: str, deletion: float | None = None,
        removed: float | None = None) -> dict[str, Any]:
    tor = TOR_A if node == "node-a" else TOR_B
    return {"name": name, "node": node, "deletion": deletion, "networkRemoved": removed,
            "torHop": {V4: tor, V6: tor}, "nodeHop": {V4: node_hop, V6: node_hop}}


PODS = [pod("web-0-1", "node-a", POD_A0, deletion=10.0, removed=13.0), pod("web-1-1", "node-a", POD_A1),
        pod("web-2-1", "node-b", POD_B0, deletion=30.0, removed=33.0)]


def change(at: float, where: str, *hops: str, prefix: str = V4) -> dict[str, Any]:
    return {"at": at, "prefix": prefix, "where": where, "nexthops": sorted(hops)}


CHANGES = [
    change(10.003, "node-a", POD_A1 + "flock1"),  # web-0-1 leaves node-a's set
    change(15.0, "node-a", POD_A0 + "flock2", POD_A1 + "flock1"),  # its replacement joins
    change(30.02, "ToR", TOR_A),  # node-b withdrawn: web-2-1 was its last pod
    change(36.0, "ToR", TOR_A, TOR_B),  # node-b back
]


def life(served_by: str, last_ok: float, end: float, outcome: str = "reset", target: str = "198.51.100.10",
         initial: bool = True, slot: int = 0) -> dict[str, Any]:
    return {"slot": slot, "target": target, "localPort": 40000 + slot, "initial": initial, "opened": 1.0,
            "servedBy": served_by, "lastOk": last_ok, "echoes": 10, "end": end, "outcome": outcome,
            "maxGap": round(end - last_ok, 3) if outcome != "open" else 0.1}


def cause(served_by: str, last_ok: float, end: float, target: str = "198.51.100.10") -> str:
    return long_lived_cause(life(served_by, last_ok, end, target=target),
                            next((p for p in PODS if p["name"] == served_by), None), CHANGES)


def test_the_pod_leaving_its_nodes_set_is_a_node_rehash() -> None:
    assert cause("web-0-1", 10.0, 10.1) == "node"


def test_a_pod_joining_its_nodes_set_rehashes_the_others() -> None:
    assert cause("web-1-1", 14.95, 15.05) == "node"


def test_the_tor_dropping_the_pods_node_is_a_fabric_rehash_and_so_is_a_node_coming_back() -> None:
    assert cause("web-2-1", 30.0, 30.1) == "fabric"
    assert cause("web-1-1", 35.99, 36.08) == "fabric"


def test_the_pods_network_removed_before_it_broke_is_pod_gone() -> None:
    assert cause("web-0-1", 12.95, 13.05) == "podGone"


def test_changes_of_the_other_family_other_nodes_or_outside_the_window_explain_nothing() -> None:
    assert cause("web-0-1", 10.0, 10.1, target="2001:db8:100::10") == "unexplained"
    assert cause("web-2-1", 14.95, 15.05) == "unexplained"  # node-a's change: not its node
    assert cause("web-1-1", 20.0, 20.1) == "unexplained"
    assert cause("web-1-1", 15.1, 15.2) == "unexplained"  # the change came before its last answer


def test_figures_add_up_and_split_restarting_pods_from_others() -> None:
    connections = [
        life("web-0-1", 10.0, 10.1, slot=0),  # node re-hash, restarting
        life("web-1-1", 14.95, 15.05, slot=1),  # node re-hash, not restarting
        life("web-2-1", 30.0, 30.1, slot=2),  # fabric, restarting
        life("web-1-1", 35.99, 36.08, slot=3, initial=False),  # fabric, not restarting
        life("web-0-1", 12.0, 12.05, outcome="closed", slot=4),
        life("web-1-1", 40.0, 40.0, outcome="open", slot=5),
        life("web-1-1", 20.0, 22.1, outcome="stalled", slot=6),  # unexplained
    ]
    figures = long_lived_figures(connections, [{"slot": 0, "target": "x", "at": 11.0, "outcome": "refused"}],
                                 PODS, CHANGES, slots=7)
    assert figures["opened"] == 7 and figures["openedAtStart"] == 6
    assert sum(figures["endings"].values()) == figures["opened"]
    assert figures["endings"]["closed"] == 1 and figures["endings"]["open"] == 1
    assert figures["brokenTotal"] == 5 == sum(sum(c.values()) for c in figures["broken"].values())
    assert figures["broken"]["node"] == {"notRestarting": 1, "restarting": 1}
    assert figures["broken"]["fabric"] == {"notRestarting": 1, "restarting": 1}
    assert figures["broken"]["unexplained"] == {"notRestarting": 1, "restarting": 0}
    assert figures["connectFailures"] == {"refused": 1}
    assert figures["spread"]["atStart"] == {"web-0-1": 2, "web-1-1": 3, "web-2-1": 1}
    assert figures["spread"]["atStartByNode"] == {"node-a": 5, "node-b": 1}
    text = "\n".join(render_long_lived(figures))
    assert "at the start, per pod: web-0-1 2, web-1-1 3, web-2-1 1 (per node: node-a 5, node-b 1)" in text
    assert "closed cleanly by the server 1, broken 5" in text
    assert figures["late"] == 1 and figures["longestWait"] == 2.1  # the stalled one: 20.0 -> 22.1
    assert "waited over 0.5 s for an answer: 1 connections (longest 2.10 s)" in text


def test_a_node_the_tor_does_not_route_to_moves_nothing() -> None:
    tor_hops = {"node-a": {V4: TOR_A}, "node-b": {V4: TOR_B}}
    changes = [
        change(1.0, "node-a", POD_A1 + "flock1"),  # the ToR routes to both nodes: kept
        change(2.0, "ToR", TOR_A),  # node-b withdrawn
        change(2.5, "node-b"),  # node-b deletes its withdrawn route: nothing reaches it
        change(3.0, "node-b", POD_B0 + "flock3"),  # its new pod, before the ToR comes back
        change(3.001, "ToR", TOR_A, TOR_B),
        change(4.0, "node-b", POD_B0 + "flock3", POD_B0 + "flock4"),  # routed again: kept
        change(5.0, "node-c", "via 203.0.113.130 dev flock5"),  # a node of unknown hops: kept
    ]
    kept = reaching_changes(changes, {V4: [TOR_A, TOR_B]}, tor_hops)
    assert [c["at"] for c in kept] == [1.0, 2.0, 3.001, 4.0, 5.0]


def report(failed: int, figures: dict[str, Any] | None) -> dict[str, Any]:
    return {"requests": {"total": 100, "failed": failed, "failedPercent": float(failed),
                         "failures": {"refused": failed, "reset": 0, "timeout": 0, "unreachable": 0, "error": 0}},
            "latency": {"p50": 0.004, "max": 0.005}, "torRouteChanges": 4, "nodeRouteChanges": 6,
            "longLived": figures}


def test_the_comparison_has_one_column_per_run_and_says_what_was_not_run() -> None:
    figures = long_lived_figures([life("web-1-1", 14.95, 15.05)], [], PODS, CHANGES, slots=1)
    text = render_compare([("ready-only", report(10, figures)), ("flock, plain multipath", report(1, figures)),
                           ("flock, pinned", report(0, None))], "a note")
    header, *rows = text.splitlines()
    assert header.split() == ["ready-only", "flock,", "plain", "multipath", "flock,", "pinned"]
    [node_row] = [r for r in rows if r.strip().startswith("node re-hash")][:1]
    assert node_row.split()[-3:] == ["1", "1", "-"]
    assert "flock, plain multipath failed 10.0% as many requests as ready-only." in text
    assert text.endswith("a note")


def test_three_columns_only_when_the_agent_has_connection_pinning() -> None:
    runs, note = variants(True, known=set())
    assert [v.key for v in runs] == ["ready-only", "flock-plain"] and "connectionPinning" in note
    assert all(v.datapath is None for v in runs)
    runs, note = variants(True, known={"connectionPinning"})
    assert [v.key for v in runs] == ["ready-only", "flock-plain", "flock-pinned"] and note == ""
    assert [v.datapath for v in runs] == [{"connectionPinning": False}, {"connectionPinning": False}, PINNED]
    runs, _ = variants(True, known=set(PLAIN) | set(PINNED))
    assert runs[1].datapath == PLAIN
    runs, note = variants(True, scenario="single-replica", known=set())
    assert [(v.key, v.terminating) for v in runs] == [("last-resort", "last-resort"), ("withdraw", "withdraw")]


def test_single_replica_requests_by_phase_and_a_route_less_tor() -> None:
    def sent(at: float, outcome: str = "ok") -> dict[str, Any]:
        return {"start": at, "end": at + 0.01, "target": "198.51.100.10", "outcome": outcome, "servedBy": ""}

    requests = [sent(1.0), sent(10.5), sent(12.5, "refused"), sent(13.5, "timeout"), sent(14.5)]
    phases = phase_figures(requests, [("deletion", 10.0), ("server stops", 12.0), ("replacement Ready", 14.0)])
    assert [(p["phase"], p["sent"], p["failed"]) for p in phases] == [
        ("before deletion", 1, 0), ("deletion -> server stops", 1, 0),
        ("server stops -> replacement Ready", 2, 2), ("after replacement Ready", 1, 0)]
    assert phases[2]["seconds"] == 2.0 and phases[2]["failures"] == {"refused": 1, "timeout": 1}
    assert "(refused 1, timeout 1)" in "\n".join(render_phases(phases))
    tor = [{"at": 13.0, "prefix": V4, "where": "ToR", "nexthops": []},
           {"at": 14.01, "prefix": V4, "where": "ToR", "nexthops": [TOR_B]}]
    [cause] = [a["cause"] for a in attribute([sent(13.5, "timeout")], tor, [], {V4: [TOR_A]})]
    assert cause == "timeout: sent while the ToR had no route to 198.51.100.10/32 (no node advertised it)"
