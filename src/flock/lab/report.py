"""The lab's report: figures from raw observations, and their text for a person. Pure."""

from __future__ import annotations

import itertools
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
              stopped: Sequence[Mapping[str, Any]],
              tor_start: Mapping[str, Sequence[str]] | None = None, *,
              blackholes: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """For each failed request, the cause the observations support, or "unexplained".

    ``changes``: route changes of the anycast prefixes (``at``, ``prefix``, ``where``).
    ``stopped``: per terminated pod, when its server stopped (``from``) and when traffic
    stopped being sent to it (``to``; None if never seen). A refused connection started
    in such a window went to a pod with no server; a failure of another kind sent while
    the ToR had no route to its prefix (``tor_start``: the ToR's next hops per prefix before
    its first change in ``changes``) found no node advertising it; one in flight when a node
    failed, or sent before the ToR stopped routing to it (``blackholes``: ``node``, ``at``
    its failure, ``to`` the ToR's route without it, None: never), may have been hashed to
    it (which ones, only the ToR's kernel knows); one in flight while the next hops of its
    own prefix changed was moved by an ECMP re-hash.
    """
    tor = sorted((c for c in changes if c["where"] == "ToR"), key=lambda c: c["at"])

    def tor_routes(prefix: str, at: float) -> bool:
        before = [c for c in tor if c["prefix"] == prefix and c["at"] <= at]
        return bool(before[-1]["nexthops"] if before else (tor_start or {}).get(prefix, True))

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
        elif not tor_routes(_prefix(target), started):
            cause = (f"{request['outcome']}: sent while the ToR had no route to {_prefix(target)} "
                     "(no node advertised it)")
        elif hole := next((b for b in blackholes if started <= (b["to"] if b.get("to") is not None else float("inf"))
                           and ended >= b["at"]), None):
            cause = (f"{request['outcome']}: in flight when {hole['node']} failed" if started < hole["at"] else
                     f"{request['outcome']}: sent while the ToR still routed to the failed {hole['node']} "
                     "(black hole)")
        else:
            near = sorted((c for c in changes if c["prefix"].split("/")[0] == target
                           and started - NEAR <= c["at"] <= ended + NEAR), key=lambda c: c["at"])
            cause = (f"{request['outcome']}: in flight while the next hops of {near[0]['prefix']} changed at "
                     f"{near[0]['where']} ({_rehash(near[0]['where'])} moved an existing flow to another pod)"
                     if near else f"{request['outcome']}: unexplained (no change of {target}'s route nearby)")
        attributed.append({"start": started, "target": target, "outcome": request["outcome"], "cause": cause})
    return attributed


def _rehash(where: str) -> str:
    return "fabric re-hash at the ToR" if where == "ToR" else "node re-hash"


# Long-lived connections: how one ends, and why a broken one broke.
ENDINGS = ("closed", "reset", "stalled", "unreachable", "error", "open")
BROKEN = ("reset", "stalled", "unreachable", "error")
CAUSES = (("node", "node re-hash"), ("fabric", "fabric re-hash at the ToR"), ("podGone", "pod gone"),
          ("unexplained", "unexplained"))
NODE_FAILED = ("nodeFailed", "its node failed")  # the node-failure scenario's cause, first of all
BEFORE = 0.02  # s: a route change stamped this much before the last answer may still have moved the flow
AFTER = NEAR  # s: how late a route watch may stamp a change that broke a connection
LATE = 0.5  # s: a connection that waited longer than this for an answer stalled (and maybe recovered)


def reaching_changes(changes: Sequence[Mapping[str, Any]], tor_start: Mapping[str, Sequence[str]],
                     tor_hops: Mapping[str, Mapping[str, str]]) -> list[Mapping[str, Any]]:
    """The changes that can have moved a flow: every change at the ToR (``where`` "ToR"),
    and a node's change only while the ToR routed that prefix to the node (``tor_hops``:
    per node, per prefix, the ToR's next hop to it; ``tor_start``: the ToR's next hops per
    prefix before its first change). A node the fabric no longer sends a prefix to — a
    withdrawn node deleting its route, or adding its new pod just before the ToR comes
    back to it — moves nothing. A node of unknown hops is kept."""
    tor = sorted((c for c in changes if c["where"] == "ToR"), key=lambda c: c["at"])
    kept = []
    for change in sorted(changes, key=lambda c: c["at"]):
        if change["where"] != "ToR":
            prefix = change["prefix"]
            before = [c for c in tor if c["prefix"] == prefix and c["at"] <= change["at"]]
            routed = before[-1]["nexthops"] if before else tor_start.get(prefix, ())
            hop = (tor_hops.get(change["where"]) or {}).get(prefix)
            if hop is not None and not _has(routed, hop):
                continue
        kept.append(change)
    return kept


def long_lived_cause(life: Mapping[str, Any], pod: Mapping[str, Any] | None,
                     changes: Sequence[Mapping[str, Any]], failed_nodes: Mapping[str, float] | None = None) -> str:
    """Why a long-lived connection broke: "nodeFailed", "podGone", "fabric", "node" or "unexplained".

    ``pod``: the pod that served it (its echo answers name it): ``node``, ``networkRemoved``
    (when its CNI DEL was called), ``torHop`` and ``nodeHop`` (per prefix, the ToR's next hop
    to its node and its node's next hop to it, as route watches show them). ``changes``:
    next-hop sets over time at the ToR (``where`` "ToR") and in each node's forwarding table
    (``where``: the node's name).

    The connection worked until its last answer (``lastOk``) and broke at ``end``: only a
    change in between can have moved it (the route watches stamp a change when they read
    it, so up to ``AFTER`` late). Pod gone: its network was removed before it broke.
    Otherwise a change that took away its path for sure — the ToR's set without its node
    (fabric), its node's set without its pod (node) — and failing that, the first change
    of its prefix at the ToR or at its node in the window (a set that grew or changed
    re-hashes some flows: which ones, only the kernel knows). Node failed: its pod's node
    had failed (``failed_nodes``: node -> when) before it broke.
    """
    prefix = _prefix(life["target"])
    last = life["lastOk"] if life.get("lastOk") is not None else life["opened"]
    end = life["end"] if life.get("end") is not None else last
    if pod is not None and pod["node"] in (failed_nodes or {}) and (failed_nodes or {})[pod["node"]] <= end:
        return NODE_FAILED[0]
    if pod is not None and pod.get("networkRemoved") is not None and pod["networkRemoved"] <= end:
        return "podGone"
    node = pod["node"] if pod is not None else None
    window = sorted((c for c in changes if c["prefix"] == prefix and last - BEFORE <= c["at"] <= end + AFTER
                     and (c["where"] == "ToR" or node is None or c["where"] == node)), key=lambda c: c["at"])
    if pod is not None:
        for change in window:
            if change["where"] == "ToR" and not _has(change["nexthops"], pod["torHop"][prefix]):
                return "fabric"
            if change["where"] == node and not _has(change["nexthops"], pod["nodeHop"][prefix]):
                return "node"
    if window:
        return "fabric" if window[0]["where"] == "ToR" else "node"
    return "unexplained"


def _prefix(address: str) -> str:
    return f"{address}/{128 if ':' in address else 32}"


def _has(hops: Sequence[str], start: str) -> bool:
    return any(hop.startswith(start) for hop in hops)


def long_lived_figures(connections: Sequence[Mapping[str, Any]], connect_failures: Sequence[Mapping[str, Any]],
                       pods: Sequence[Mapping[str, Any]], changes: Sequence[Mapping[str, Any]],
                       slots: int, failed_nodes: Mapping[str, float] | None = None) -> dict[str, Any]:
    """How the long-lived connections ended, broken ones by cause, and their spread over pods.

    A broken connection (reset, stalled, unreachable, error) is counted once, under its
    cause (:func:`long_lived_cause`), apart for pods that were restarting when it broke
    (``deletion`` set by then) and pods that were not. Every connection ends exactly one way
    (``endings``, summing to ``opened``). ``failed_nodes`` (node -> when it failed) adds the
    cause "nodeFailed".
    """
    by_name = {p["name"]: p for p in pods}
    endings = Counter(c["outcome"] for c in connections)
    causes = [NODE_FAILED, *CAUSES] if failed_nodes is not None else CAUSES
    broken: dict[str, dict[str, int]] = {key: {"notRestarting": 0, "restarting": 0} for key, _ in causes}
    details = []
    for life in connections:
        if life["outcome"] not in BROKEN:
            continue
        pod = by_name.get(life.get("servedBy") or "")
        cause = long_lived_cause(life, pod, changes, failed_nodes)
        end = life["end"] if life.get("end") is not None else life["opened"]
        restarting = pod is not None and pod.get("deletion") is not None and pod["deletion"] <= end
        broken[cause]["restarting" if restarting else "notRestarting"] += 1
        details.append({"slot": life["slot"], "target": life["target"], "localPort": life.get("localPort"),
                        "servedBy": life.get("servedBy") or "", "outcome": life["outcome"], "cause": cause,
                        "restarting": restarting, "opened": life["opened"], "lastOk": life.get("lastOk"),
                        "end": end})
    initial = [c for c in connections if c.get("initial")]
    gaps = [c.get("maxGap") or 0.0 for c in connections]
    node_of = {p["name"]: p["node"] for p in pods}
    return {
        "slots": slots,
        "opened": len(connections),
        "openedAtStart": len(initial),
        "endings": {kind: endings.get(kind, 0) for kind in ENDINGS},
        "broken": broken,
        "brokenTotal": sum(endings.get(kind, 0) for kind in BROKEN),
        "brokenDetails": details,
        "connectFailures": dict(Counter(f["outcome"] for f in connect_failures)),
        "late": sum(1 for gap in gaps if gap > LATE),
        "longestWait": round(max(gaps), 3) if gaps else None,
        "spread": {
            "atStart": dict(sorted(Counter(c["servedBy"] or "-" for c in initial).items())),
            "atStartByNode": dict(sorted(Counter(node_of.get(c["servedBy"], "-") for c in initial).items())),
            "all": dict(sorted(Counter(c["servedBy"] or "-" for c in connections).items())),
        },
    }


def phase_figures(requests: Sequence[Mapping[str, Any]], marks: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """Requests by when they were sent, between ``marks`` ((event, time), in time order):
    before the first, from each to the next, after the last."""
    bounds = [("start", float("-inf")), *marks, ("end", float("inf"))]
    figures = []
    for (first, start), (second, end) in itertools.pairwise(bounds):
        label = (f"before {second}" if first == "start" else f"after {first}" if second == "end"
                 else f"{first} -> {second}")
        sent = [r for r in requests if start <= r["start"] < end]
        kinds = Counter(r["outcome"] for r in sent)
        figures.append({"phase": label, "seconds": None if start == float("-inf") or end == float("inf")
                        else round(end - start, 3), "sent": len(sent), "ok": kinds.get("ok", 0),
                        "failed": len(sent) - kinds.get("ok", 0),
                        "failures": {kind: kinds.get(kind, 0) for kind in FAILURE_KINDS if kinds.get(kind)}})
    return figures


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
    failure = report.get("failure")
    what = (f"{failure['node']} fails like a hung machine, agents' BFD {'on' if failure['bfd'] else 'off'}"
            if failure else f"rolling restart of {report['replicas']} replicas"
            if report.get("scenario") != "single-replica"
            else "a single replica replaced (its replacement on another node)")
    lines = [
        f"flock lab — {what}, eligibility rule: {report['eligibility']}, "
        f"datapath: {_datapath(report.get('datapath'))}"
        + (f", pods' {TERMINATING}: {report['terminating']}" if report.get("terminating") else ""),
        f"  load: {report['rate']:g} new TCP connections/s per address family to {', '.join(report['anycast'])}",
        "",
        f"  requests   {r['total']:>7}   ok {r['ok']}   failed {r['failed']} ({r['failedPercent']:.3f}%)",
        "  failures   " + "   ".join(f"{kind} {r['failures'][kind]}" for kind in FAILURE_KINDS),
        *render_phases(report.get("phases")),
        "",
    ]
    if failure:
        lines += render_failure(failure)
    else:
        lines += render_withdrawals(report)
    lines.append("")
    lines.append(f"  route changes seen at the ToR: {report['torRouteChanges']}")
    chain = report.get("daisyChain")
    if chain:
        lines.append(f"  daisy chain (all nodes): {_chain(report)} packets forwarded / reset, nobody had them / "
                     "VXLAN refused")
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
    served = r.get("servedBy") or {}
    if served:
        lines.append("  new connections per pod: " + ", ".join(f"{pod} {n}" for pod, n in sorted(served.items())))
    lines += render_long_lived(report.get("longLived"))
    return "\n".join(lines)


TERMINATING = "flock.io/anycast-terminating"


def _long_lived(report: Mapping[str, Any], *path: str) -> str:
    """A long-lived connections figure of a report, by its keys ("-" when it has none)."""
    value: Any = report.get("longLived")
    for key in path:
        value = (value or {}).get(key)
    return "-" if value is None else str(value)


def _chain(report: Mapping[str, Any]) -> str:
    """Daisy chaining's packets over all nodes: forwarded / reset / refused ("off" when it was)."""
    chain = report.get("daisyChain")
    if not chain:
        return "off"
    return " / ".join(str(chain.get(what, 0)) for what in ("forwarded", "reset", "refused"))


def render_withdrawals(report: Mapping[str, Any]) -> list[str]:
    lines = [
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
    return lines


def _bfd_states(failure: Mapping[str, Any]) -> str:
    return ", ".join(str(state) for state in (failure.get("torBfdBefore") or {}).values()) or "-"


def _last_errors(failure: Mapping[str, Any]) -> str:
    errors = list(dict.fromkeys(str(e) for e in (failure.get("torLastError") or {}).values() if e))
    return ", ".join(errors) or "-"


def render_failure(failure: Mapping[str, Any]) -> list[str]:
    node = failure["node"]
    frozen = Counter(failure.get("frozen") or [])
    holes = failure.get("blackHole") or {}
    return [
        f"  node failure: {node}'s processes frozen (SIGSTOP: "
        + ", ".join(name + (f" x{n}" if n > 1 else "") for name, n in frozen.items())
        + f"), every packet on its uplink dropped; applied in {_ms(failure.get('appliedSeconds'))}",
        f"    the ToR's BFD sessions to {node} before: {_bfd_states(failure)}",
        f"    black hole at the ToR ({node} fails -> ToR stops routing to {node}): "
        + ", ".join(f"{prefix} {_ms(seconds)}" for prefix, seconds in holes.items()),
        f"    the ToR's last error on {node}'s sessions: {_last_errors(failure)}",
    ]


def render_phases(phases: Sequence[Mapping[str, Any]] | None) -> list[str]:
    if not phases:
        return []
    lines = ["", f"  requests by when they were sent{'':<27}{'lasting':>9}{'sent':>8}{'ok':>8}{'failed':>8}"]
    for phase in phases:
        lasting = "" if phase["seconds"] is None else f"{phase['seconds']:.2f} s"
        kinds = ", ".join(f"{kind} {n}" for kind, n in phase["failures"].items())
        lines.append(f"    {phase['phase']:<54}{lasting:>9}{phase['sent']:>8}{phase['ok']:>8}{phase['failed']:>8}"
                     + (f"  ({kinds})" if kinds else ""))
    return lines


def _datapath(datapath: Mapping[str, Any] | None) -> str:
    if not datapath:
        return "the agent's default"
    return ", ".join(f"{key} {value}" for key, value in datapath.items())


def render_long_lived(figures: Mapping[str, Any] | None) -> list[str]:
    if not figures:
        return []
    spread = figures["spread"]
    endings = figures["endings"]
    failures = ", ".join(f"{kind} {n}" for kind, n in sorted(figures["connectFailures"].items())) or "none"
    lines = [
        "",
        f"  long-lived connections: {figures['slots']} kept open (an echo every 100 ms; a connection that ends "
        "is opened again)",
        "    at the start, per pod: " + ", ".join(f"{pod} {n}" for pod, n in spread["atStart"].items())
        + " (per node: " + ", ".join(f"{node} {n}" for node, n in spread["atStartByNode"].items()) + ")",
        f"    opened {figures['opened']} ({figures['openedAtStart']} at the start); "
        f"connection attempts that failed: {failures}",
        f"    ended: closed cleanly by the server {endings['closed']}, broken {figures['brokenTotal']} ("
        + ", ".join(f"{kind} {endings[kind]}" for kind in BROKEN) + f"), still open at the end {endings['open']}",
        f"    waited over {LATE:g} s for an answer: {figures.get('late', 0)} connections"
        + (f" (longest {figures['longestWait']:.2f} s)" if figures.get("longestWait") else ""),
        f"    broken, by cause{'':<20}{'pod not restarting':>20}{'pod restarting':>18}",
    ]
    for key, label in (NODE_FAILED, *CAUSES):
        if key not in figures["broken"]:
            continue
        counts = figures["broken"][key]
        lines.append(f"      {label:<32}{counts['notRestarting']:>20}{counts['restarting']:>18}")
    return lines


def compare(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The figures a comparison is judged by, per run (``runs``: (key, report), the
    ready-only run first), and each flock run's failures as a share of the ready-only run's."""
    figures: dict[str, Any] = {}
    baseline = runs[0][1]["requests"]["failed"] if runs else 0
    for key, report in runs:
        requests, long_lived = report["requests"], report.get("longLived") or {}
        broken = long_lived.get("broken") or {}
        figures[key] = {
            "failed": requests["failed"], "total": requests["total"], "failedPercent": requests["failedPercent"],
            "failedRatioToFirst": round(requests["failed"] / baseline, 4) if baseline else None,
            "latencyMax": report["latency"]["max"],
            "longLivedOpened": long_lived.get("opened"),
            "longLivedClosedCleanly": (long_lived.get("endings") or {}).get("closed"),
            "longLivedBroken": long_lived.get("brokenTotal"),
            "longLivedBrokenNotRestarting": {cause: counts["notRestarting"] for cause, counts in broken.items()},
            "longLivedBrokenRestarting": {cause: counts["restarting"] for cause, counts in broken.items()},
        }
        if report.get("failure"):
            figures[key]["blackHoleSeconds"] = report["failure"].get("blackHoleSeconds")
            figures[key]["torLastError"] = report["failure"].get("torLastError")
    return figures


def _share(report: Mapping[str, Any], key: str) -> str:
    share = (report.get("shares") or {}).get(key) or {}
    return f"{_ms(share.get('p50'))} / {_ms(share.get('max'))}"


def _phase_labels(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    labels: list[str] = []
    for report in reports:
        labels += [p["phase"] for p in report.get("phases") or [] if p["phase"] not in labels]
    return labels


def _phase(report: Mapping[str, Any], label: str) -> str:
    found = [p for p in report.get("phases") or [] if p["phase"] == label]
    return f"{found[0]['failed']} of {found[0]['sent']}" if found else "-"


def _spread(counts: Mapping[str, int]) -> str:
    return " / ".join(str(n) for _, n in sorted(counts.items())) or "-"


def render_compare(runs: Sequence[tuple[str, Mapping[str, Any]]], note: str = "") -> str:
    """Runs side by side: ``runs`` is (column title, report), the ready-only run first."""
    reports = [r for _, r in runs]
    if reports and all(r.get("failure") for r in reports):
        return render_failure_compare(runs, note)

    def row(name: str, value: Any) -> tuple[str, ...]:
        return (name, *[value(r) for r in reports])

    rows = [
        row("requests", lambda r: str(r["requests"]["total"])),
        row("failed", lambda r: f"{r['requests']['failed']} ({r['requests']['failedPercent']:.3f}%)"),
        *[row(f"  {kind}", lambda r, kind=kind: str(r["requests"]["failures"][kind])) for kind in FAILURE_KINDS],
        row("withdrawal p50", lambda r: _ms(r["latency"]["p50"])),
        row("withdrawal max", lambda r: _ms(r["latency"]["max"])),
        *[row(f"  {label} p50 / max", lambda r, key=key: _share(r, key))
          for key, label in (("api", "API share"), ("node", "event->node route"), ("tor", "event->ToR route"))],
        *([row("failed, by when sent:", lambda r: "")]
          + [row(f"  {label}", lambda r, label=label: _phase(r, label)) for label in _phase_labels(reports)]
          if _phase_labels(reports) else []),
        row("ToR route changes", lambda r: str(r["torRouteChanges"])),
        row("node forwarding changes", lambda r: str(r.get("nodeRouteChanges", "-"))),
        row("daisy chain: forwarded / reset / refused", _chain),
        ("",) * (1 + len(reports)),
        row("long-lived connections opened", lambda r: _long_lived(r, "opened")),
        row("  at the start, per pod", lambda r: _spread(((r.get("longLived") or {}).get("spread") or {})
                                                         .get("atStart") or {})),
        row("  closed cleanly by the server", lambda r: _long_lived(r, "endings", "closed")),
        row("  broken (reset, stalled...)", lambda r: _long_lived(r, "brokenTotal")),
        row("    pod not restarting:", lambda r: ""),
        *[row(f"      {label}", lambda r, key=key: _long_lived(r, "broken", key, "notRestarting"))
          for key, label in CAUSES],
        row("    pod restarting:", lambda r: ""),
        *[row(f"      {label}", lambda r, key=key: _long_lived(r, "broken", key, "restarting"))
          for key, label in CAUSES],
        row("  open at the end", lambda r: _long_lived(r, "endings", "open")),
        row(f"  waited over {LATE:g} s for an answer", lambda r: _long_lived(r, "late")),
    ]
    width = max(len(r[0]) for r in rows) + 2
    column = max(22, *(len(title) + 2 for title, _ in runs))
    out = [f"{'':<{width}}" + "".join(f"{title:>{column}}" for title, _ in runs)]
    out += [(f"{r[0]:<{width}}" + "".join(f"{v:>{column}}" for v in r[1:])).rstrip() for r in rows]
    pods = sorted(((reports[0].get("longLived") or {}).get("spread") or {}).get("atStart") or {}) if reports else []
    if pods:
        out.append(f"\n(at the start, per pod: {' / '.join(pods)})")
    baseline = reports[0]["requests"]["failed"] if reports else 0
    for title, report in runs[1:]:
        if baseline:
            out.append(f"{title} failed {100.0 * report['requests']['failed'] / baseline:.1f}% as many requests "
                       f"as {runs[0][0]}.")
    if note:
        out.append(note)
    return "\n".join(out)


def _table(titles: Sequence[str], rows: Sequence[tuple[str, ...]]) -> list[str]:
    width = max(len(r[0]) for r in rows) + 2
    column = max(22, *(len(title) + 2 for title in titles), *(len(v) + 2 for r in rows for v in r[1:]))
    out = [f"{'':<{width}}" + "".join(f"{title:>{column}}" for title in titles)]
    out += [(f"{r[0]:<{width}}" + "".join(f"{v:>{column}}" for v in r[1:])).rstrip() for r in rows]
    return out


def render_failure_compare(runs: Sequence[tuple[str, Mapping[str, Any]]], note: str = "") -> str:
    """Node-failure runs side by side (``runs``: (column title, report)): the black hole at
    the ToR and what it cost."""
    reports = [r for _, r in runs]
    node = reports[0]["failure"]["node"]
    prefixes = list(dict.fromkeys(p for r in reports for p in (r["failure"].get("blackHole") or {})))

    def row(name: str, value: Any) -> tuple[str, ...]:
        return (name, *[value(r) for r in reports])

    def wait(r: Mapping[str, Any]) -> str:
        longest = (r.get("longLived") or {}).get("longestWait")
        return "-" if longest is None else f"{longest:.2f} s"

    labels = _phase_labels(reports)
    rows = [
        row(f"the ToR's BFD to {node} before", _bfd_states_of),
        row("black hole at the ToR", lambda r: _ms(r["failure"].get("blackHoleSeconds"))),
        *[row(f"  {prefix}", lambda r, prefix=prefix: _ms((r["failure"].get("blackHole") or {}).get(prefix)))
          for prefix in prefixes],
        row("the ToR's last error", lambda r: _last_errors(r["failure"])),
        row("requests", lambda r: str(r["requests"]["total"])),
        row("failed", lambda r: f"{r['requests']['failed']} ({r['requests']['failedPercent']:.3f}%)"),
        *[row(f"  {kind}", lambda r, kind=kind: str(r["requests"]["failures"][kind])) for kind in FAILURE_KINDS],
        *([row("failed, by when sent:", lambda r: "")]
          + [row(f"  {label}", lambda r, label=label: _phase(r, label)) for label in labels] if labels else []),
        row("ToR route changes", lambda r: str(r["torRouteChanges"])),
        ("",) * (1 + len(reports)),
        row("long-lived connections opened", lambda r: _long_lived(r, "opened")),
        row("  at the start, per node", lambda r: _spread(((r.get("longLived") or {}).get("spread") or {})
                                                          .get("atStartByNode") or {})),
        row("  broken (reset, stalled...)", lambda r: _long_lived(r, "brokenTotal")),
        *[row(f"    {label}", lambda r, key=key: _long_lived(r, "broken", key, "notRestarting"))
          for key, label in (NODE_FAILED, *CAUSES)],
        row("  connection attempts that failed", lambda r: str(sum(((r.get("longLived") or {})
                                                                    .get("connectFailures") or {}).values()))),
        row(f"  waited over {LATE:g} s for an answer", lambda r: _long_lived(r, "late")),
        row("  longest wait for an answer", wait),
    ]
    out = _table([title for title, _ in runs], rows)
    out.append(f"\n(black hole: from {node}'s failure to the ToR's route without {node}; for each prefix, "
               "and the longer)")
    nodes = sorted(((reports[0].get("longLived") or {}).get("spread") or {}).get("atStartByNode") or {})
    if nodes:
        out.append(f"(at the start, per node: {' / '.join(nodes)})")
    if note:
        out.append(note)
    return "\n".join(out)


def _bfd_states_of(report: Mapping[str, Any]) -> str:
    return _bfd_states(report["failure"])
