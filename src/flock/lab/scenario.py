"""The lab's scenario: bring the fabric up, load it, roll every replica, report.

Default: 3 replicas of one anycast service (v4 and v6), two on node-a (a multipath
route) and one on node-b; HTTP load from the client netns through the ToR, a new TCP
connection per request, and long-lived connections (an echo every 100 ms) opened before
the restart and kept through it; every replica restarted in turn (terminate, then its
replacement on the same node).

``single-replica``: one replica on node-a, deleted as a node drain or an eviction
deletes it: its ReplicaSet creates the replacement at once (on node-b), which is Ready
``startup`` seconds later, while the old pod goes through its grace. The pods'
``flock.io/anycast-terminating`` policy (last-resort or withdraw) decides whether the old
pod serves meanwhile.

``node-failure``: the default placement, and node-b fails the way a hung machine does:
every process of node-b (its BIRD, its flock-agent, its pods' servers) is frozen with
SIGSTOP and every packet on its uplink is dropped in its netns (nftables), so the ToR gets
no BGP Cease, no TCP close and no carrier change; it finds out by its BFD (when node-b's
agent runs BFD) or when its hold timer expires. The ToR runs BFD on its node sessions
(``tor_bird_config(bfd=True)``). Measured: the black hole at the ToR, from the failure to
the ToR's route without node-b, and the requests lost meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import pathlib
import subprocess
import time
from collections import Counter
from typing import Any

import aiohttp

from flock.adapters.daisychain import count_packets
from flock.core.annotation import LAST_RESORT, TERMINATING_ANNOTATION, WITHDRAW
from flock.core.eligibility import READY_AND_NOT_TERMINATING, READY_ONLY
from flock.lab import report as reports
from flock.lab.apiserver import WATCH_LOG
from flock.lab.kubelet import Kubelet, LabPod
from flock.lab.routewatch import RouteWatch
from flock.lab.topology import (
    ANYCAST,
    ROUTE_PROTOCOL,
    Fabric,
    Node,
    bfd_sessions,
    build,
    fail_uplink,
    freeze,
    last_error,
    netns_pids,
    python,
    stop_process,
    teardown,
    thaw,
    tor_protocol,
    wait_for,
)

logger = logging.getLogger(__name__)

PREFIXES = tuple(f"{a}/{32 if '.' in a else 128}" for a in ANYCAST)


@dataclasses.dataclass(frozen=True)
class Options:
    run_dir: pathlib.Path
    nodes: int = 2
    replicas: int = 3
    rate: float = 200.0
    grace: float = 2.0
    detection: float = 1.0
    warmup: float = 2.0
    settle: float = 1.0
    eligibility: str = READY_AND_NOT_TERMINATING
    long_lived: int = 60  # long-lived connections kept open, half IPv4, half IPv6
    datapath: dict[str, Any] | None = None  # the agents' `datapath` config key (None: their default)
    scenario: str = "rolling"  # or "single-replica", "node-failure"
    startup: float = 4.0  # single-replica: the replacement is Ready this long after the deletion
    terminating: str | None = None  # the pods' flock.io/anycast-terminating (None: not set)
    bfd: bool | None = None  # the agents' bird.bfd.enabled (None: not written, the agent's default: on)

    @property
    def tor_bfd(self) -> bool:
        """The ToR runs BFD on its node sessions (the node-failure scenario)."""
        return self.scenario == NODE_FAILURE

    @property
    def annotations(self) -> dict[str, str]:
        return {TERMINATING_ANNOTATION: self.terminating} if self.terminating else {}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One column of a comparison: an eligibility rule and a datapath."""

    key: str  # "ready-only", "flock-plain", "flock-pinned"; "last-resort", "withdraw"; "bfd", "no-bfd"
    title: str
    eligibility: str
    datapath: dict[str, Any] | None
    terminating: str | None = None  # the pods' flock.io/anycast-terminating
    bfd: bool | None = None  # the agents' bird.bfd.enabled (None: the agent's default)


SCENARIOS = ("rolling", "single-replica", "node-failure")
NODE_FAILURE = "node-failure"
FAILED_NODE = 1  # node-b


# The seed's datapath: plain multipath routes, no connection pinning. Each key is written
# only if the agent knows it (datapath_keys()).
PLAIN = {"connectionPinning": False, "nexthopGroups": "multipath"}
PINNED = {"connectionPinning": True}


def datapath_keys() -> set[str]:
    """The ``datapath`` keys this checkout's agent accepts (empty: it has no such key)."""
    from flock.core.settings import parse_config
    from flock.errors import ConfigError

    known = set()
    for key, value in {**PLAIN, **PINNED}.items():
        probe = {"nodeName": "probe", "bird": {"routerId": "192.0.2.1", "asn": 65000}, "datapath": {key: value}}
        try:
            parse_config(probe, {})
        except ConfigError:
            continue
        known.add(key)
    return known


def variants(compare: bool, eligibility: str = READY_AND_NOT_TERMINATING, datapath: str = "default",
             known: set[str] | None = None, scenario: str = "rolling",
             terminating: str | None = None, bfd: bool | None = None) -> tuple[list[Variant], str]:
    """The runs to make, and a note on any the agent cannot do yet.

    ``compare``: ready-only (plain multipath), flock's rule with plain multipath and no
    pinning (the seed's datapath), flock's rule with pinning (flock's datapath). Without
    the agent's ``datapath.connectionPinning`` key the last is left out (and said so).
    In the single-replica scenario: flock's rule with the pods' terminating policy
    last-resort, then withdraw. In the node-failure scenario: the agents' BFD on (their
    default, 300 ms x 3), then off. Otherwise one run: ``eligibility`` with ``datapath``
    "default" (the agent's own), "plain" or "pinned", ``terminating`` and ``bfd``.
    """
    if scenario == "single-replica" and compare:
        return [Variant(policy, f"flock, {policy}", READY_AND_NOT_TERMINATING, None, policy)
                for policy in (LAST_RESORT, WITHDRAW)], ""
    if scenario == NODE_FAILURE and compare:
        return [Variant("bfd", "BFD on (300 ms x 3)", eligibility, None, terminating, True),
                Variant("no-bfd", "BFD off", eligibility, None, terminating, False)], ""
    known = datapath_keys() if known is None else known
    plain = {k: v for k, v in PLAIN.items() if k in known} or None
    pinned = {k: v for k, v in PINNED.items() if k in known} or None
    missing = "" if "connectionPinning" in known else (
        "flock, pinned: not run — this agent has no datapath.connectionPinning key yet "
        "(flock's rule ran on the datapath it has: plain multipath).")
    if compare:
        runs = [Variant("ready-only", "ready-only", READY_ONLY, plain),
                Variant("flock-plain", "flock, plain multipath", READY_AND_NOT_TERMINATING, plain)]
        if pinned is not None:
            runs.append(Variant("flock-pinned", "flock, pinned", READY_AND_NOT_TERMINATING, pinned))
        return runs, missing
    chosen = {"default": None, "plain": plain, "pinned": pinned}[datapath]
    if datapath == "pinned" and pinned is None:
        raise ValueError(f"--datapath pinned: {missing}")
    title = ("ready-only" if eligibility == READY_ONLY else "flock") + (
        "" if datapath == "default" else f", {datapath}") + (f", {terminating}" if terminating else "") + (
        "" if bfd is None else f", BFD {'on' if bfd else 'off'}")
    return [Variant(f"{eligibility}-{datapath}", title, eligibility, chosen, terminating, bfd)], ""


def placement(options: Options) -> list[int]:
    """Replica slot -> node index: two on the first node (a multipath route), the rest
    round-robin over the other nodes. 3 replicas on 2 nodes: a, a, b."""
    if options.nodes == 1:
        return [0] * options.replicas
    rest = [1 + i % (options.nodes - 1) for i in range(max(0, options.replicas - 2))]
    return [0, 0, *rest][: options.replicas]


def tor_hop(node: Node, prefix: str) -> str:
    link = node.spec.link
    via = link.b_v6.ip if ":" in prefix else link.b_v4.ip
    return f"via {via} dev {link.ifname}"


def pod_hop(pod: LabPod, prefix: str) -> str:
    via = pod.ipv6 if ":" in prefix else pod.ipv4
    return f"via {via} dev "  # the dev (flock<8hex>) is the pod's: matched as a prefix of the hop


def has_hop(hops: frozenset[str], start: str) -> bool:
    return any(hop.startswith(start) for hop in hops)


async def up(options: Options) -> tuple[Fabric, Kubelet, aiohttp.ClientSession, dict[int, LabPod]]:
    fabric = await asyncio.to_thread(build, options.run_dir, options.nodes, options.eligibility, options.datapath,
                                     bfd=options.bfd, tor_bfd=options.tor_bfd)
    session = aiohttp.ClientSession()
    try:
        kubelet = Kubelet(fabric, session, ", ".join(ANYCAST), grace=options.grace, detection=options.detection)
        pods: dict[int, LabPod] = {}
        for slot, node_index in enumerate(placement(options)):
            pods[slot] = await kubelet.start_pod(f"web-{slot}-1", fabric.nodes[node_index], options.annotations)
        used_nodes = {fabric.nodes[i] for i in set(placement(options))}
        await asyncio.to_thread(wait_for, lambda: _tor_routes_to(fabric, used_nodes), 60,
                                "the ToR routing to every node")
    except BaseException:
        await session.close()
        raise
    return fabric, kubelet, session, pods


def _tor_routes_to(fabric: Fabric, nodes: set[Node]) -> bool:
    from flock.lab.routewatch import nexthops
    return all(has_hop(nexthops(fabric.names.tor, prefix), tor_hop(node, prefix))
               for prefix in PREFIXES for node in nodes)


async def rolling_restart(options: Options) -> dict[str, Any]:
    """The whole run: up, load, roll, measure, down. Returns the report (a dict)."""
    try:
        fabric, kubelet, session, pods = await up(options)
        try:
            return await _roll(options, fabric, kubelet, pods)
        finally:
            await session.close()
    finally:
        await asyncio.to_thread(teardown, options.run_dir)


async def _roll(options: Options, fabric: Fabric, kubelet: Kubelet, pods: dict[int, LabPod]) -> dict[str, Any]:
    # By where they watch: "ToR", "node-a", ...
    watches = {"ToR": RouteWatch(fabric.names.tor, PREFIXES)}
    for node in fabric.nodes:
        # flock's advertised routes only: a withdrawn (re-tagged) route no longer attracts traffic.
        watches[node.spec.name] = RouteWatch(node.spec.netns, PREFIXES, protocol=ROUTE_PROTOCOL)
    # What each node forwards with, whatever the route's protocol (a withdrawn route still
    # forwards): a change of these next hops re-hashes the node's flows.
    forwarding = {node.spec.name: RouteWatch(node.spec.netns, PREFIXES) for node in fabric.nodes}
    results, streams_out = options.run_dir / "load.json", options.run_dir / "streams.json"
    streams = None
    if options.long_lived > 0:
        streams = await asyncio.to_thread(
            fabric.state.spawn,
            [python(), "-m", "flock.lab.streams", *[f"--target={a}" for a in ANYCAST],
             "--count", str(options.long_lived), "--out", str(streams_out)],
            options.run_dir / "streams.log", fabric.names.client)
    load = await asyncio.to_thread(
        fabric.state.spawn,
        [python(), "-m", "flock.lab.load", *[f"--target={a}" for a in ANYCAST], "--rate", str(options.rate),
         "--out", str(results)], options.run_dir / "load.log", fabric.names.client)
    terminated: list[dict[str, Any]] = []
    every_pod = list(pods.values())
    failure: dict[str, Any] | None = None
    frozen: list[int] = []
    try:
        await asyncio.sleep(options.warmup)
        if options.scenario == "single-replica":
            await _replace(options, fabric, kubelet, pods, terminated, every_pod)
        if options.scenario == NODE_FAILURE:
            failure = await _fail_node(options, fabric, fabric.nodes[FAILED_NODE], every_pod, frozen)
        for slot in sorted(pods) if options.scenario == "rolling" else []:
            old = pods[slot]
            others_on_node = [p for s, p in pods.items() if s != slot and p.node is old.node]
            await kubelet.terminate_pod(old)
            terminated.append({"pod": old, "lastOnNode": not others_on_node})
            generation = int(old.name.rsplit("-", 1)[1]) + 1
            pods[slot] = await kubelet.start_pod(f"web-{slot}-{generation}", old.node, options.annotations)
            every_pod.append(pods[slot])
            back = {old.node}
            await asyncio.to_thread(wait_for, functools.partial(_tor_routes_to, fabric, back), 30,
                                    f"the ToR routing to {old.node.spec.name} again")
            await asyncio.sleep(options.settle)
        await asyncio.sleep(options.warmup)
    finally:
        await asyncio.to_thread(stop_process, load, 30)
        if streams is not None:
            await asyncio.to_thread(stop_process, streams, 30)
        for watch in [*watches.values(), *forwarding.values()]:
            watch.close()
        thaw(frozen)  # the failed node's processes go on (to their teardown)
    chained = await asyncio.to_thread(_chain_counts, fabric)
    requests = json.loads(results.read_text()) if results.exists() else []
    long_lived = json.loads(streams_out.read_text()) if streams_out.exists() else None
    events = await kubelet.events()
    deliveries = watch_deliveries(options.run_dir / WATCH_LOG)
    return {"labId": fabric.names.lab_id, "datapath": options.datapath, "hashSeeds": fabric.hash_seeds,
            "daisyChain": chained,
            **build_report(options, requests, terminated, watches, events, deliveries,
                           forwarding=forwarding, long_lived=long_lived, every_pod=every_pod, failure=failure)}


def _chain_counts(fabric: Fabric) -> dict[str, int] | None:
    """What daisy chaining did over every node (its nftables counters); None where it was off."""
    total: dict[str, int] = {}
    for node in fabric.nodes:
        command = ["nft", "-j", "list", "counters", "table", "inet", "flock"]
        done = subprocess.run(["ip", "netns", "exec", node.spec.netns, *command], capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            continue
        for what, count in count_packets(json.loads(done.stdout)).items():
            total[what] = total.get(what, 0) + count
    return total or None


async def _fail_node(options: Options, fabric: Fabric, node: Node, every_pod: list[LabPod],
                     frozen: list[int]) -> dict[str, Any]:
    """``node`` fails as a hung machine: its processes frozen, its uplink silent. Waits
    until the ToR no longer routes to it (BFD or the hold timer), then ``options.warmup``
    more under load. ``frozen`` gets the stopped PIDs as they are stopped (the caller
    thaws them, whatever happens)."""
    tor_ctl = fabric.run_dir / "tor" / "bird.ctl"
    addresses = [str(node.spec.link.b_v4.ip), str(node.spec.link.b_v6.ip)]
    if options.bfd is not False:  # the agent runs BFD: wait for the ToR's sessions to it
        await asyncio.to_thread(wait_for, lambda: all(bfd_sessions(tor_ctl).get(a) == "Up" for a in addresses), 30,
                                f"the ToR's BFD sessions to {node.spec.name} Up")
    bfd_before = {a: bfd_sessions(tor_ctl).get(a, "none") for a in addresses}
    pods = [p for p in every_pod if p.node is node]
    labels = {node.bird.pid: "bird", node.agent.pid: "flock-agent",
              **{p.server.pid: f"{p.name}'s server" for p in pods if p.server is not None}}

    def fail() -> tuple[float, float]:
        # All of node's processes, and whatever else runs in its namespace or its pods'.
        found = [*labels, *netns_pids(node.spec.netns), *[pid for p in pods for pid in netns_pids(p.netns)]]
        at = time.monotonic()
        frozen.extend(freeze(found))
        fail_uplink(node.spec.netns, node.spec.link.ifname)
        return at, time.monotonic()

    failed_at, applied_at = await asyncio.to_thread(fail)
    logger.info("%s failed: %d processes frozen, uplink dropping", node.spec.name, len(frozen))
    try:
        await asyncio.to_thread(wait_for, lambda: not _tor_routes_to_any(fabric, node), 30,
                                f"the ToR to stop routing to {node.spec.name}")
    except RuntimeError as exc:
        logger.warning("%s", exc)
    await asyncio.sleep(options.warmup)
    errors = {a: last_error(tor_ctl, tor_protocol(a)) for a in addresses}
    return {"node": node.spec.name, "at": failed_at, "appliedSeconds": applied_at - failed_at,
            "frozen": [labels.get(pid) or _comm(pid) for pid in frozen], "bfd": options.bfd is not False,
            "torBfdBefore": bfd_before, "torLastError": errors,
            "torHop": {p: tor_hop(node, p) for p in PREFIXES}}


def _tor_routes_to_any(fabric: Fabric, node: Node) -> bool:
    from flock.lab.routewatch import nexthops
    return any(has_hop(nexthops(fabric.names.tor, prefix), tor_hop(node, prefix)) for prefix in PREFIXES)


def _comm(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return str(pid)


async def _replace(options: Options, fabric: Fabric, kubelet: Kubelet, pods: dict[int, LabPod],
                   terminated: list[dict[str, Any]], every_pod: list[LabPod]) -> None:
    """The single replica deleted; its replacement created at once on the next node,
    Ready ``options.startup`` seconds later (its start-up), while the old pod terminates."""
    old = pods[0]
    node = fabric.nodes[(fabric.nodes.index(old.node) + 1) % len(fabric.nodes)]

    async def replacement() -> LabPod:
        await asyncio.sleep(options.startup)
        return await kubelet.start_pod("web-0-2", node, options.annotations)

    started = asyncio.create_task(replacement())
    await kubelet.terminate_pod(old)
    terminated.append({"pod": old, "lastOnNode": True})
    pods[0] = await started
    every_pod.append(pods[0])
    await asyncio.to_thread(wait_for, functools.partial(_tor_routes_to, fabric, {node}), 30,
                            f"the ToR routing to {node.spec.name}")
    await asyncio.sleep(options.settle)


def phases(every_pod: list[LabPod]) -> list[tuple[str, float]]:
    """Single replica: the moments that split the run — the old pod's deletion, its
    server's stop, the replacement's Ready — in time order."""
    old, new = every_pod[0], every_pod[-1]
    marks = [("deletion", old.marked_for_deletion or None), ("server stops", old.server_stopped),
             ("replacement Ready", new.ready_at if new is not old else None)]
    return sorted(((label, at) for label, at in marks if at is not None), key=lambda m: m[1])


def failure_figures(failure: dict[str, Any], tor: RouteWatch) -> dict[str, Any]:
    """The black hole at the ToR: from the node's failure (``at``) to the ToR's route
    without the node, per prefix (None: not within the run); ``to``: when it ended for
    every prefix."""
    at = failure["at"]
    ends = {p: tor.first_change_after(p, at, failure["torHop"][p]) for p in PREFIXES}
    holes = {p: None if end is None else end - at for p, end in ends.items()}
    to = None if any(end is None for end in ends.values()) else max(e for e in ends.values() if e is not None)
    return {**failure, "blackHole": holes, "to": to,
            "blackHoleSeconds": None if to is None else round(to - at, 4)}


def failure_marks(failure: dict[str, Any]) -> list[tuple[str, float]]:
    """Node failure: the moments that split the run — the failure, the ToR's route without the node."""
    node = failure["node"]
    return [(f"{node} fails", failure["at"])] + (
        [(f"ToR stops routing to {node}", failure["to"])] if failure.get("to") is not None else [])


def pod_timeline(pod: LabPod) -> dict[str, Any]:
    """What the long-lived attribution needs of a pod: its node, when it was marked for
    deletion and lost its network, and the next hops that lead to it (ToR, node)."""
    return {"name": pod.name, "node": pod.node.spec.name,
            "deletion": pod.marked_for_deletion or None, "networkRemoved": pod.network_removed,
            "torHop": {p: tor_hop(pod.node, p) for p in PREFIXES},
            "nodeHop": {p: pod_hop(pod, p) for p in PREFIXES}}


def watch_deliveries(path: pathlib.Path) -> list[dict[str, Any]]:
    """The API server's log of watch events handed to its clients (at, watch, name...)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shares(pod: LabPod, deliveries: list[dict[str, Any]], node_at: float | None,
           tor_at: float | None) -> dict[str, float | None]:
    """Where a withdrawal's time went: the API (the kubelet's PATCH sent -> the event on
    the agent's watch), then from that event to the node's route change, and to the ToR's
    (a node's last pod only: flock withdraws the BGP announcement first, so the ToR's
    route changes before the node's, whose route goes right after).

    The event is the last one for the pod on its node's watch before the node's route
    changed (the deletionTimestamp with flock's rule, NotReady with the ready-only rule);
    the PATCH is the kubelet's last one sent before that event.
    """
    watch = f"spec.nodeName={pod.node.spec.name}"
    seen = [d["at"] for d in deliveries if d["name"] == pod.name and d["watch"] == watch
            and pod.marked_for_deletion <= d["at"] <= (node_at if node_at is not None else float("inf"))]
    event_at = max(seen) if seen and node_at is not None else None
    sent = [t for t in (pod.marked_for_deletion, pod.not_ready_sent)
            if t is not None and event_at is not None and t <= event_at]
    return {
        "apiSeconds": event_at - max(sent) if event_at is not None and sent else None,
        "nodeSeconds": node_at - event_at if event_at is not None and node_at is not None else None,
        "torSeconds": tor_at - event_at if event_at is not None and tor_at is not None else None,
    }


def build_report(options: Options, requests: list[dict[str, Any]], terminated: list[dict[str, Any]],
                 watches: dict[str, RouteWatch], events: list[dict[str, Any]],
                 deliveries: list[dict[str, Any]] | None = None, *,
                 forwarding: dict[str, RouteWatch] | None = None, long_lived: dict[str, Any] | None = None,
                 every_pod: list[LabPod] | None = None, failure: dict[str, Any] | None = None) -> dict[str, Any]:
    pods = []
    stopped: list[dict[str, Any]] = []  # when each terminated pod had no server
    for item in terminated:
        pod: LabPod = item["pod"]
        t0 = pod.marked_for_deletion
        if item["lastOnNode"]:
            where, watch = f"ToR stops routing to {pod.node.spec.name}", watches["ToR"]
            times = [watch.first_change_after(p, t0, tor_hop(pod.node, p)) for p in PREFIXES]
        else:
            where, watch = f"{pod.node.spec.name} drops the next hop", watches[pod.node.spec.name]
            times = [watch.first_change_after(p, t0, pod_hop(pod, p)) for p in PREFIXES]
        latency = None if any(t is None for t in times) else max(times) - t0  # type: ignore[operator,type-var]
        node_times = [watches[pod.node.spec.name].first_change_after(p, t0, pod_hop(pod, p)) for p in PREFIXES]
        node_at = None if any(t is None for t in node_times) else max(node_times)  # type: ignore[type-var]
        tor_at = t0 + latency if item["lastOnNode"] and latency is not None else None
        pods.append({"name": pod.name, "node": pod.node.spec.name, "where": where, "withdrawalSeconds": latency,
                     **shares(pod, deliveries or [], node_at, tor_at)})
        if pod.server_stopped is not None:
            withdrawn = None if latency is None else t0 + latency
            stopped.append({"pod": pod.name, "from": pod.server_stopped, "to": withdrawn})
    changes: list[dict[str, Any]] = [
        {"at": c.at, "prefix": c.prefix, "where": where, "nexthops": sorted(c.nexthops)}
        for where, watch in watches.items() for p in PREFIXES for c in watch.history(p)]
    # What moves flows: the ToR's next hops and each node's forwarding ones.
    moves = [c for c in changes if c["where"] == "ToR"] + [
        {"at": c.at, "prefix": c.prefix, "where": where, "nexthops": sorted(c.nexthops)}
        for where, watch in (forwarding or {}).items() for p in PREFIXES for c in watch.history(p)]
    tor_start = {p: sorted(hops) for p, hops in watches["ToR"].initial.items()}
    tor_hops = {node.spec.name: {p: tor_hop(node, p) for p in PREFIXES}
                for node in {pod.node for pod in every_pod or []}}
    # ... those that can have moved a flow (a node's only while the ToR sends it traffic).
    rehashes = reports.reaching_changes(moves, tor_start, tor_hops)
    if failure is not None:
        failure = failure_figures(failure, watches["ToR"])
    flock_events = [e for e in events if (e.get("source") or {}).get("component") == "flock-agent"]
    samples = [f"{e['reason']:<18} {e['involvedObject'].get('kind')}/{e['involvedObject'].get('name')}: "
               f"{e['message']}" for e in flock_events if e["reason"] == "AnycastWithdrawn"][:4]
    return {
        "scenario": options.scenario, "terminating": options.terminating,
        "eligibility": options.eligibility, "replicas": options.replicas, "rate": options.rate,
        "anycast": list(ANYCAST), "requests": reports.request_figures(requests),
        "pods": pods, "latency": reports.latency_figures(pods), "shares": reports.share_figures(pods),
        "torRouteChanges": len([c for c in changes if c["where"] == "ToR"]),
        "nodeRouteChanges": len([c for c in moves if c["where"] != "ToR"]) if forwarding else None,
        "routeChanges": sorted(changes, key=lambda c: c["at"]),
        "routeStart": {where: {p: sorted(hops) for p, hops in watch.initial.items()}
                       for where, watch in {**watches, **{f"{n} (forwarding)": w
                                                          for n, w in (forwarding or {}).items()}}.items()},
        "forwardingChanges": sorted((c for c in moves if c["where"] != "ToR"), key=lambda c: c["at"]),
        "events": {"byReason": dict(Counter(e["reason"] for e in flock_events)), "samples": samples},
        "attributed": reports.attribute(requests, rehashes if forwarding else changes, stopped, tor_start,
                                        blackholes=[] if failure is None else [failure]),
        "phases": (reports.phase_figures(requests, phases(every_pod))
                   if options.scenario == "single-replica" and every_pod
                   else reports.phase_figures(requests, failure_marks(failure)) if failure is not None else None),
        "failure": failure,
        "longLived": None if long_lived is None else reports.long_lived_figures(
            long_lived["connections"], long_lived["connectFailures"], [pod_timeline(p) for p in every_pod or []],
            rehashes, options.long_lived,
            failed_nodes=None if failure is None else {failure["node"]: failure["at"]}),
        "measuredAt": time.time(),
    }

