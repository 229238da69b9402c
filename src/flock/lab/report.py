"""The lab's report: figures from raw observations, and their text for a person. Pure."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

FAILURE_KINDS = ("refused", "reset", "timeout", "unreachable", "error")
NEAR = 0.25  # s: a failure this close to a route change is counted as caused by it


def request_figures(requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds = Counter(r["outcome"] for r in requests)
    failed = sum(n for kind, n in kinds.items() if kind != "ok")
    by_target = Counter(r["target"] for r in requests)
    return {
        "total": len(requests),
        "ok": kinds.get("ok", 0),
        "failed": failed,
        "failedPercent": round(100.0 * failed / len(requests), 3) if requests else 0.0,
        "failures": {kind: kinds.get(kind, 0) for kind in FAILURE_KINDS},
        "byTarget": dict(by_target),
        "servedBy": dict(Counter(r["servedBy"] for r in requests if r["servedBy"])),
    }


def attribute(requests: Sequence[Mapping[str, Any]], changes: Sequence[Mapping[str, Any]],
              stopped: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each failed request, the cause the observations support, or "unexplained".

    ``changes``: route changes of the anycast prefixes (``at``, ``prefix``, ``where``).
    ``stopped``: per terminated pod, when its server stopped (``from``) and when traffic
    stopped being sent to it (``to``; None if never seen). A refused connection started
    in such a window went to a pod with no server; a failure of another kind in flight
    while the next hops of its own prefix changed was moved by an ECMP re-hash.
    """
    attributed = []
    for request in requests:
        if request["outcome"] == "ok":
            continue
        started, ended, target = request["start"], request["end"], request["target"]
        if request["outcome"] == "refused":
            culprits = [s["pod"] for s in stopped
                        if s["from"] <= started + NEAR and (s["to"] is None or started <= s["to"] + NEAR)]
            cause = (f"refused: sent while {', '.join(culprits)} still attracted traffic with its server stopped"
                     if culprits else "refused: unexplained (no pod was stopped and still routed then)")
        else:
            near = [c for c in changes if c["prefix"].split("/")[0] == target
                    and started - NEAR <= c["at"] <= ended + NEAR]
            cause = (f"{request['outcome']}: in flight while the next hops of {near[0]['prefix']} changed at "
                     f"{near[0]['where']} (ECMP re-hash moved an existing flow to another pod)" if near
                     else f"{request['outcome']}: unexplained (no change of {target}'s route nearby)")
        attributed.append({"start": started, "target": target, "outcome": request["outcome"], "cause": cause})
    return attributed


def latency_figures(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    values = [p["withdrawalSeconds"] for p in pods if p.get("withdrawalSeconds") is not None]
    return {
        "p50": round(statistics.median(values), 4) if values else None,
        "max": round(max(values), 4) if values else None,
        "missing": sum(1 for p in pods if p.get("withdrawalSeconds") is None),
    }


# A withdrawal's time, split: (key in the report, what it spans).
# "tor": a node's last pod only (its BGP withdrawal comes before its node route goes).
SHARES = (("api", "API: PATCH sent -> event on the agent's watch"),
          ("node", "event -> node route"),
          ("tor", "event -> ToR route (node's last pod)"))


def share_figures(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """p50 and max of each share of the withdrawals (``apiSeconds``, ``nodeSeconds``...)."""
    figures = {}
    for key, _ in SHARES:
        values = [p[f"{key}Seconds"] for p in pods if p.get(f"{key}Seconds") is not None]
        figures[key] = {"p50": round(statistics.median(values), 4) if values else None,
                        "max": round(max(values), 4) if values else None, "count": len(values)}
    return figures


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def render(report: Mapping[str, Any]) -> str:
    r = report["requests"]
    lines = [
        f"flock lab — rolling restart of {report['replicas']} replicas, eligibility rule: {report['eligibility']}",
        f"  load: {report['rate']:g} new TCP connections/s per address family to {', '.join(report['anycast'])}",
        "",
        f"  requests   {r['total']:>7}   ok {r['ok']}   failed {r['failed']} ({r['failedPercent']:.3f}%)",
        "  failures   " + "   ".join(f"{kind} {r['failures'][kind]}" for kind in FAILURE_KINDS),
        "",
        "  withdrawal latency (deletionTimestamp -> traffic no longer sent to the pod)",
        "    pod            node     where                               latency      API  ->route    ->ToR",
    ]
    for pod in report["pods"]:
        split = "".join(f"{_ms(pod.get(f'{key}Seconds')):>9}" for key, _ in SHARES)
        lines.append(f"    {pod['name']:<14} {pod['node']:<8} {pod['where']:<35} "
                     f"{_ms(pod['withdrawalSeconds']):>7}{split}")
    lat = report["latency"]
    lines += [f"    p50 {_ms(lat['p50'])}   max {_ms(lat['max'])}"]
    for key, what in SHARES:
        share = (report.get("shares") or {}).get(key) or {}
        lines.append(f"    {what:<47} p50 {_ms(share.get('p50')):>7}   max {_ms(share.get('max')):>7}")
    lines.append("")
    lines.append(f"  route changes seen at the ToR: {report['torRouteChanges']}")
    events = report["events"]
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(events["byReason"].items()))
    lines.append(f"  events posted by the agents: {by_reason or 'none'}")
    for sample in events["samples"]:
        lines.append(f"    {sample}")
    causes = Counter(a["cause"] for a in report["attributed"])
    if causes:
        lines.append("  where the failures came from:")
        for cause, count in causes.most_common():
            lines.append(f"    {count:>5}  {cause}")
    return "\n".join(lines)


def compare(flock: Mapping[str, Any], ready_only: Mapping[str, Any]) -> dict[str, Any]:
    a, b = flock["requests"], ready_only["requests"]
    ratio = (a["failed"] / b["failed"]) if b["failed"] else None
    return {
        "flockFailed": a["failed"], "flockTotal": a["total"], "flockFailedPercent": a["failedPercent"],
        "readyOnlyFailed": b["failed"], "readyOnlyTotal": b["total"], "readyOnlyFailedPercent": b["failedPercent"],
        "ratio": round(ratio, 4) if ratio is not None else None,
        "flockLatencyMax": flock["latency"]["max"], "readyOnlyLatencyMax": ready_only["latency"]["max"],
    }


def _share(report: Mapping[str, Any], key: str) -> str:
    share = (report.get("shares") or {}).get(key) or {}
    return f"{_ms(share.get('p50'))} / {_ms(share.get('max'))}"


def render_compare(flock: Mapping[str, Any], ready_only: Mapping[str, Any]) -> str:
    c = compare(flock, ready_only)
    rows = [
        ("requests", str(c["flockTotal"]), str(c["readyOnlyTotal"])),
        ("failed", f"{c['flockFailed']} ({c['flockFailedPercent']:.3f}%)",
         f"{c['readyOnlyFailed']} ({c['readyOnlyFailedPercent']:.3f}%)"),
        *[(f"  {kind}", str(flock["requests"]["failures"][kind]), str(ready_only["requests"]["failures"][kind]))
          for kind in FAILURE_KINDS],
        ("withdrawal p50", _ms(flock["latency"]["p50"]), _ms(ready_only["latency"]["p50"])),
        ("withdrawal max", _ms(flock["latency"]["max"]), _ms(ready_only["latency"]["max"])),
        *[(f"  {label} p50 / max", _share(flock, key), _share(ready_only, key))
          for key, label in (("api", "API share"), ("node", "event->node route"), ("tor", "event->ToR route"))],
        ("ToR route changes", str(flock["torRouteChanges"]), str(ready_only["torRouteChanges"])),
    ]
    width = max(len(r[0]) for r in rows) + 2
    out = [f"{'':<{width}}{'flock rule':>22}{'ready-only rule':>22}"]
    out += [f"{name:<{width}}{a:>22}{b:>22}" for name, a, b in rows]
    if c["ratio"] is not None:
        out.append(f"\nflock's rule failed {c['ratio'] * 100:.1f}% as many requests as the ready-only rule.")
    return "\n".join(out)
