"""What a reconcile pass costs at 100 / 1k / 10k anycast routes, and how long a withdrawal
takes to reach the top-of-rack router, beside references measured in the same run.

A throw-away namespace ``flk-bench-<pid>-<hex>`` gets two host veths and 400 "pods"
(allocations whose next hops are addresses on the veths' subnets; every anycast route
has two next hops) plus one lone pod that alone serves one more prefix, a real BIRD
running flock's template, and a Reconciler wired to the real adapters (NetlinkRoutes,
BirdControl). Figures, best of ``--rounds``:

  install       the first pass from empty (routes and Events; bird.conf is applied before,
                at start-up, as the agent does)                    ref: ``ip -batch`` of the same writes
  routes only   NetlinkRoutes.apply of those N routes              ref: the same ``ip -batch`` (onlink)
  quiet tick    a tick after a settled pass                        ref: ``ip -j`` of the same reads
  full view     a tick with the periodic full kernel dump          ref: the same ``ip -j``
  one pod       one pod (of 400) not ready: its next hops leave    (no reference)
  burst         250 pods turn Ready within 100 ms with the loop running: passes, BIRD
                reloads (0: bird.conf is applied once, at start), the passes' total time
                (what they cost the CPU), and the time from the last event until every
                next hop is in

Withdrawal, measured to the ToR: a second namespace holds a ToR BIRD in eBGP with the
node's BIRD (flock's rendered config, one IPv4 and one IPv6 session). With N other
prefixes advertised and present in the ToR's kernel, the lone pod turns not ready; the
time runs from the pod cache update (then ``reconcile(trigger="pod")``) until the ToR's
kernel deletes its route, as a netlink route monitor in the ToR's namespace sees it
(flock.lab.routewatch's socket, read by a child process: its stamps never wait for this
process's GIL); a second monitor in the node stamps the re-tag, which splits the figure
into agent and BIRD-to-ToR. ``--repeats`` times per size, re-advertised in between; p50 / max.
References, same node, same ToR, same N:

  new floor     ``ip route replace <prefix> proto 202 ...`` by ``ip`` -> ToR route gone
  old floor     how flock withdrew before BIRD learned its routes: a static bird.conf
                listing every advertised prefix, written without one, ``birdc configure``,
                then ``ip route del`` of the kernel route -> ToR route gone

The reconciler logs as in the agent (``kopf.configure()``: info level, kopf's format), to
/dev/null: a first pass pays for its log lines. (Figures before this were measured with
no logging configured; then the agent logged a line per route edit, ~190 ms of a first
pass at 10k that no figure showed. Now a batch of more than 20 edits logs one line.)

Needs root, ``ip`` and ``bird``; touches nothing outside its namespaces, which it deletes
at the end, also on failure, and stops every BIRD it started by its PID.

Every figure is measured once per ``--nexthop-groups`` mode (``datapath.nexthopGroups``;
default both, resilient first): routes through resilient next-hop groups (a member object
per pod and family, one group per prefix: two requests for a new prefix instead of one,
and a dump that reads the next-hop objects too) and plain multipath routes.

The references do what flock does in each mode. With plain multipath routes, ``ip -batch``
writes the same routes (``route replace ... nexthop via ... dev ... onlink``) and ``ip -j
route show`` (-4 and -6) reads the main table. With resilient groups flock writes more,
and the kernel does more for it: a member per pod and family, a group per prefix (for
which the kernel sets up 128 buckets) and the route through the group; so the install's
reference is ``ip -batch`` of those same objects, with the same ids, in the same order
(:func:`batch_lines`), measured at ~1.9x the plain routes' ``ip -batch`` (1k: 41.6 vs 22.6
ms, 10k: 364 vs 175). Likewise the full view reads the next-hop objects as well as the
routes, and its reference adds ``ip -j nexthop show`` (10k: 10,503 objects). Against the
plain routes' ``ip -batch`` and ``ip -j route show`` a resilient flock would be charged for
the kernel's work on groups that the reference never asks for; those figures are printed
too, in brackets, for comparison. Issue 10's bars (install <= 3x, full view <= 1.5x) are
judged against the references of the mode.

    .venv/bin/python bench/passes.py [--sizes 100,1000,10000] [--rounds 3] [--repeats 9]
                                     [--nexthop-groups resilient,multipath]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence

from flock.adapters import nhgroups
from flock.adapters.bird import BirdControl, render_bird_conf
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.store import AllocationStore
from flock.core.birdview import bird_view
from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, PodRef, host_prefix
from flock.core.podcache import PodCache
from flock.core.routediff import DeleteRoute, KernelRoutes, ReplaceRoute, RouteEdit, diff_routes
from flock.core.settings import AgentConfig, parse_config
from flock.lab.routewatch import notifications, route_socket
from flock.lab.topology import tor_bird_config
from flock.metrics import Metrics
from flock.reconciler import Reconciler
from flock.testing import RecordingEvents

PROTO, WITHDRAWN_PROTO = 201, 202
DEVS = ("flock0000aaaa", "flock0000bbbb")
PODS = 400  # each serves 2 * size / 400 prefixes: at most 50, under maxAnycastPerPod
V4_ANYCAST = 100  # anycast(k) for k < 100 is IPv4 (198.51.100.1-100), the rest IPv6
V6_POOL = int(ipaddress.IPv6Address("2001:db8:100::"))
POOLS = ("198.51.100.0/25", "2001:db8:100::/64")
POD_CIDRS = ("192.0.2.0/24", "203.0.113.0/24", "2001:db8:a::/64", "2001:db8:b::/64")
LONE = ipaddress.IPv6Address("2001:db8:100::f:1")  # served by pod PODS alone: the withdrawn prefix
REF_NEW = ipaddress.IPv6Address("2001:db8:100::f:2")  # the new floor's prefix (written by ip)
REF_OLD = ipaddress.IPv6Address("2001:db8:100::f:3")  # the old floor's prefix (static in bird.conf)
# The node <-> ToR link "fl0", outside the pods' subnets and the anycast pools.
TOR_V4, NODE_V4 = "198.51.100.253", "198.51.100.254"
TOR_V6, NODE_V6 = "2001:db8:ffff::1", "2001:db8:ffff::2"
NODE_ASN, TOR_ASN = 65101, 65000
ROUTER_ID = "192.0.2.1"


def ip(*args: str, netns: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], input=stdin, capture_output=True, text=True,
                          check=True, timeout=300)
    return done.stdout


def add_netns(netns: str) -> None:
    subprocess.run(["ip", "netns", "add", netns], check=True)
    ip("link", "set", "lo", "up", netns=netns)


def build(netns: str) -> None:
    """The node: two host veths (their peers stay in the namespace), the pods' subnets."""
    add_netns(netns)
    for n, dev in enumerate(DEVS):
        ip("link", "add", dev, "type", "veth", "peer", "name", f"peer{n}", netns=netns)
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0"],
                       check=True)
        ip("link", "set", dev, "up", netns=netns)
        ip("link", "set", f"peer{n}", "up", netns=netns)
    ip("addr", "add", "192.0.2.1/24", "dev", DEVS[0], netns=netns)
    ip("addr", "add", "203.0.113.1/24", "dev", DEVS[1], netns=netns)
    ip("addr", "add", "2001:db8:a::1/64", "dev", DEVS[0], "nodad", netns=netns)
    ip("addr", "add", "2001:db8:b::1/64", "dev", DEVS[1], "nodad", netns=netns)


def build_tor(tor: str, node: str) -> None:
    """The ToR's namespace and veth ``fl0`` to the node (made in the ToR, its peer moved
    straight into the node: it never exists in the root namespace)."""
    add_netns(tor)
    ip("link", "add", "fl0", "type", "veth", "peer", "name", "fl0", "netns", node, netns=tor)
    for netns, v4, v6 in ((tor, TOR_V4, TOR_V6), (node, NODE_V4, NODE_V6)):
        ip("addr", "add", f"{v4}/30", "dev", "fl0", netns=netns)
        ip("-6", "addr", "add", f"{v6}/64", "dev", "fl0", "nodad", netns=netns)
        ip("link", "set", "fl0", "up", netns=netns)


def pod_ips(n: int) -> tuple[IPAddress, ...]:
    """Pod n's eth0 addresses: on dev n % 2's subnets."""
    side, index = n % 2, n // 2
    return (ipaddress.ip_address(f"{('192.0.2', '203.0.113')[side]}.{2 + index}"),
            ipaddress.ip_address(f"2001:db8:{'ab'[side]}::{2 + index:x}"))


def anycast(k: int) -> IPAddress:
    """The k-th anycast address: 198.51.100.1-100 first, then IPv6."""
    return ipaddress.ip_address(f"198.51.100.{k + 1}") if k < V4_ANYCAST else ipaddress.IPv6Address(V6_POOL + k)


def others(size: int) -> list[IPAddress]:
    return [anycast(k) for k in range(size)]


@dataclasses.dataclass
class Node:
    netns: str
    config: AgentConfig
    reconciler: Reconciler
    routes: NetlinkRoutes
    bird: BirdControl
    pods: PodCache
    store: AllocationStore
    served: dict[int, list[IPAddress]]

    @property
    def config_path(self) -> pathlib.Path:
        return self.config.bird.config_path

    @property
    def socket(self) -> pathlib.Path:
        return self.config.bird.socket


def pod_body(n: int, addresses: list[IPAddress], ready: bool = True) -> dict[str, object]:
    return {"metadata": {"namespace": "bench", "name": f"pod-{n}", "uid": f"uid-{n}",
                         "annotations": {"flock.io/anycast": " ".join(map(str, addresses))}},
            "spec": {"nodeName": "node-a"},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def node_config(netns: str, workdir: pathlib.Path) -> AgentConfig:
    return parse_config({
        "nodeName": "node-a", "stateDir": str(workdir / "state"), "hostNetns": netns,
        "anycastPools": [{"cidr": pool} for pool in POOLS],
        "podCIDRs": list(POD_CIDRS), "tickSeconds": 2, "maxAnycastPerPod": 64,
        "routeProtocol": PROTO, "withdrawnRouteProtocol": WITHDRAWN_PROTO,
        "bird": {"routerId": ROUTER_ID, "asn": NODE_ASN, "configPath": str(workdir / "bird.conf"),
                 "socket": str(workdir / "bird.ctl"),
                 "peers": [{"address": TOR_V4, "asn": TOR_ASN}, {"address": TOR_V6, "asn": TOR_ASN}]}},
        environ={})


def render(config: AgentConfig) -> str:
    """flock's bird.conf for this node, as the agent renders it."""
    return render_bird_conf(bird_view(config=config, pod_cidrs=config.pod_cidrs or ()), None)


async def make_node(config: AgentConfig, size: int) -> Node:
    store = AllocationStore(config.state_dir)
    await store.load()
    # Every prefix k is served by pods k % PODS and (k + 1) % PODS; pod PODS serves LONE alone.
    served: dict[int, list[IPAddress]] = {n: [] for n in range(PODS + 1)}
    for k in range(size):
        served[k % PODS].append(anycast(k))
        served[(k + 1) % PODS].append(anycast(k))
    served[PODS] = [LONE]
    for n, addresses in served.items():
        await store.put(Allocation(ContainerID(f"c{n}"), PodRef("bench", f"pod-{n}", f"uid-{n}"),
                                   DEVS[n % 2], pod_ips(n), tuple(addresses), AllocationState.COMMITTED))
    pods = PodCache("node-a", max_anycast=64)
    pods.replace_all([pod_body(n, served[n]) for n in range(PODS + 1)], pods.watch_serial())
    assert config.host_netns is not None
    routes = NetlinkRoutes(protocol=config.route_protocol, withdrawn_protocol=config.withdrawn_route_protocol,
                           last_resort_protocol=config.last_resort_route_protocol, netns=config.host_netns,
                           timeout=120, nexthop_groups=MODE[0])
    await routes.start()
    assert routes.mode == MODE[0], routes.fallback
    bird = BirdControl(config_path=config.bird.config_path, socket=config.bird.socket, timeout=60)
    reconciler = Reconciler(config=config, store=store, pods=pods, routes=routes, bird=bird,
                            render_bird=lambda: render(config), events=RecordingEvents(), metrics=Metrics())
    return Node(config.host_netns, config, reconciler, routes, bird, pods, store, served)


class Bird:
    """A BIRD in the foreground (``bird -f``) inside a namespace; stopped by its PID."""

    def __init__(self, netns: str, directory: pathlib.Path, text: str) -> None:
        self.netns = netns
        self.config_path, self.socket, self.log = (directory / "bird.conf", directory / "bird.ctl",
                                                   directory / "bird.log")
        self.config_path.write_text(text)
        with self.log.open("wb") as log:  # `ip netns exec` execs bird: the PID is BIRD's own
            self.process = subprocess.Popen(["ip", "netns", "exec", netns, "bird", "-f", "-c", str(self.config_path),
                                             "-s", str(self.socket)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while "Daemon is up" not in self.birdc("show", "status"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bird in {netns} did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def birdc(self, *args: str) -> str:
        if not self.socket.exists():
            return ""
        done = subprocess.run(["birdc", "-s", str(self.socket), *args], capture_output=True, text=True,
                              timeout=120, check=False)
        return done.stdout + done.stderr

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextlib.contextmanager
def cleanup(namespaces: list[str], birds: list[Bird], workdir: pathlib.Path) -> Iterator[None]:
    """Stops every BIRD in ``birds`` and deletes every namespace in ``namespaces`` (both
    filled while the block runs) and ``workdir`` at the end, also on failure."""
    try:
        yield
    finally:
        for bird in reversed(birds):
            bird.stop()
        for netns in namespaces:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def names(*roles: str) -> list[str]:
    run = f"{os.getpid()}-{secrets.token_hex(2)}"
    return [f"flk-bench-{run}-{role}" for role in roles]


@contextlib.asynccontextmanager
async def bench_node(size: int) -> AsyncIterator[Node]:
    """A fresh namespace, BIRD (a minimal config: the first pass applies flock's) and wired
    Reconciler with ``size`` routes' worth of pods; no ToR. All removed at the end."""
    (netns,) = names("node")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="flk-bench-", dir="/tmp"))
    namespaces: list[str] = []
    birds: list[Bird] = []
    with cleanup(namespaces, birds, workdir):
        namespaces.append(netns)
        await asyncio.to_thread(build, netns)
        config = node_config(netns, workdir)
        birds.append(await asyncio.to_thread(Bird, netns, workdir, f"router id {ROUTER_ID};\nprotocol device {{}}\n"))
        node = await make_node(config, size)
        try:
            yield node
        finally:
            await node.routes.close()


async def timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return (time.perf_counter() - start) * 1000


def ip_batch_ms(netns: str, lines: list[str]) -> float:
    start = time.perf_counter()
    ip("-batch", "-", netns=netns, stdin="\n".join(lines) + "\n")
    return (time.perf_counter() - start) * 1000


def ip_json_ms(netns: str, nexthops: bool = False) -> float:
    """Both families' main table, every protocol (flock's among them), as JSON; with
    ``nexthops`` also every next-hop object (``ip -j nexthop show``)."""
    start = time.perf_counter()
    for family in ("-4", "-6"):
        ip(family, "-j", "route", "show", "table", "main", netns=netns)
    if nexthops:
        ip("-j", "nexthop", "show", netns=netns)
    return (time.perf_counter() - start) * 1000


def row(name: str, ours: float, reference: float | None, ref_name: str = "") -> None:
    if reference is None:
        print(f"  {name:<14} {ours:10.2f} ms")
    else:
        print(f"  {name:<14} {ours:10.2f} ms   {ref_name:<38} {reference:9.2f} ms   {ours / reference:6.2f}x")


async def settle(size: int) -> None:
    """Give BIRD time to learn a large change before the next figure is timed."""
    await asyncio.sleep(0.2 + size / 10000)


async def one_round(size: int) -> dict[str, float]:
    """Every pass figure once, in a fresh namespace with a fresh BIRD."""
    figures: dict[str, float] = {}
    async with bench_node(size) as node:
        netns, reconciler = node.netns, node.reconciler
        await reconciler.configure_bird()  # at start-up, before the first pass (flock.agent)
        figures["install"] = await timed(lambda: reconciler.reconcile(trigger="start"))
        assert len((await node.routes.dump()).advertised) == size + 1, "every route installed"
        await settle(size)
        figures["quiet"] = await timed(lambda: reconciler.reconcile(trigger="tick"))
        figures["full"] = await timed(lambda: reconciler.reconcile(trigger="tick", full_view=True))
        figures["ip_json"] = await asyncio.to_thread(ip_json_ms, netns)
        if MODE[0] == "resilient":  # what the full view reads: the next-hop objects as well
            figures["ip_json_nh"] = await asyncio.to_thread(ip_json_ms, netns, True)
        node.pods.observe("MODIFIED", pod_body(7, node.served[7], ready=False))
        figures["one"] = await timed(lambda: reconciler.reconcile(trigger="pod"))

        # The route writes alone, and ip -batch of the same routes, from empty each.
        table = (await node.routes.dump()).advertised
        await node.routes.apply([DeleteRoute(a) for a in table])
        edits = diff_routes(table, KernelRoutes())
        await settle(size)
        figures["routes"] = await timed(lambda: node.routes.apply(edits))
        await node.routes.apply([DeleteRoute(a) for a in table])
        await settle(size)
        figures["ip_batch"] = await asyncio.to_thread(ip_batch_ms, netns, batch_lines(edits, MODE[0]))
        after = (await node.routes.dump()).advertised
        assert after == table, "ip -batch wrote the routes flock writes"
        if MODE[0] == "resilient":  # the plain routes' reference as well, for comparison
            await node.routes.apply([DeleteRoute(a) for a in table])
            await settle(size)
            figures["ip_batch_plain"] = await asyncio.to_thread(ip_batch_ms, netns, batch_lines(edits))
            after = (await node.routes.dump()).advertised
            assert after == table, "ip -batch wrote the routes flock writes"
    return figures


def batch_lines(edits: Sequence[RouteEdit], mode: str = "multipath") -> list[str]:
    """The same routes as ``ip -batch`` input, written as flock writes them (onlink).

    ``mode`` "resilient": what flock writes in that mode, the same objects with the same
    ids (flock's ranges): a member per pod and family (``nexthop add id M via ... dev ...
    onlink``), a resilient group per prefix (``nexthop add id G group M1/M2 type resilient
    buckets 128 ...``, which the kernel fills with 128 buckets), then the route through it
    (``route replace ... nhid G``). Plain routes would leave out two thirds of the requests
    and the kernel's work on the groups."""
    lines = []
    if mode == "resilient":
        members: dict[tuple[str, str], int] = {}
        member_ids, group_ids = nhgroups.id_ranges(PROTO)
        for edit in edits:
            assert isinstance(edit, ReplaceRoute)
            for hop in edit.nexthops:
                key = (str(hop.via), hop.dev)
                if key not in members:
                    members[key] = member_ids[len(members)]
                    lines.append(f"nexthop add id {members[key]} via {hop.via} dev {hop.dev} onlink proto {PROTO}")
        for n, edit in enumerate(edits):
            assert isinstance(edit, ReplaceRoute)
            group = "/".join(str(members[str(h.via), h.dev]) for h in edit.nexthops)
            lines.append(f"nexthop add id {group_ids[n]} group {group} type resilient "
                         f"buckets {nhgroups.DEFAULT_BUCKETS} idle_timer {nhgroups.IDLE_TIMER:g} "
                         f"unbalanced_timer {nhgroups.UNBALANCED_TIMER:g} proto {PROTO}")
            lines.append(f"route replace {host_prefix(edit.address)} proto {PROTO} nhid {group_ids[n]}")
        return lines
    for edit in edits:
        assert isinstance(edit, ReplaceRoute)
        if len(edit.nexthops) == 1:
            hops = f"via {edit.nexthops[0].via} dev {edit.nexthops[0].dev} onlink"
        else:
            hops = " ".join(f"nexthop via {h.via} dev {h.dev} onlink" for h in edit.nexthops)
        lines.append(f"route replace {host_prefix(edit.address)} proto {PROTO} {hops}")
    return lines


async def burst(size: int, count: int = 250, spread: float = 0.1) -> dict[str, float]:
    """``count`` not-ready pods turn Ready within ``spread`` seconds while the reconcile loop
    runs (tick 2 s): passes, BIRD reloads and the time from the last event to convergence."""
    async with bench_node(size) as node:
        for n in range(count):  # these pods start not ready
            node.pods.observe("MODIFIED", pod_body(n, node.served[n], ready=False))
        await node.reconciler.reconcile(trigger="start")
        await settle(size)
        passes_before, reloads_before, busy_before = node.reconciler.passes, _reloads(node), _pass_seconds(node)
        running = asyncio.create_task(node.reconciler.run())
        try:
            for n in range(count):
                node.pods.observe("MODIFIED", pod_body(n, node.served[n], ready=True))
                node.reconciler.wake("pod")
                await asyncio.sleep(spread / count)
            last_event = time.perf_counter()
            while True:  # converged: every pod's next hops installed
                await node.reconciler.next_pass("bench")
                table = (await node.routes.dump()).advertised
                if sum(len(hops) for hops in table.values()) == 2 * size + 1:
                    break
            converged = time.perf_counter() - last_event
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        return {"passes": node.reconciler.passes - passes_before, "reloads": _reloads(node) - reloads_before,
                "busy": (_pass_seconds(node) - busy_before) * 1000, "converged": converged * 1000}


def _pass_seconds(node: Node) -> float:
    """The passes' total time so far (the reconciler's histogram)."""
    return float(node.reconciler.metrics.pass_seconds._sum.get())


def _reloads(node: Node) -> float:
    """BIRD reconfigurations so far (the reconciler's metric)."""
    return float(node.reconciler.metrics.bird_reloads.labels(result="ok")._value.get())


# --- withdrawal, measured to the ToR ---------------------------------------------------------


class Monitor:
    """Route notifications for some prefixes in a namespace, each stamped with
    CLOCK_MONOTONIC (``time.monotonic()``, the same clock in every process) as the read
    that brought it returned.

    The socket is read by a child process of its own (this script with ``--monitor``:
    flock.lab.routewatch's socket and parser, one thread, nothing else to run), so a
    stamp never waits for this process's GIL while a reconcile pass holds it, and the
    child runs SCHED_FIFO, so it never waits for a CPU that a pass or a BIRD keeps busy
    (it sleeps in recv() between notifications). It writes one line per notification;
    a thread here collects them. Stopped by its PID.
    """

    def __init__(self, netns: str, addresses: Iterable[IPAddress]) -> None:
        self.netns = netns
        self.seen: list[tuple[float, str, str, int]] = []  # (at, "new" | "del", prefix, protocol)
        self.process = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--monitor", netns,
             *(host_prefix(a) for a in addresses)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"route monitor in {netns} did not start")
        self._thread = threading.Thread(target=self._collect, name=f"monitor-{netns}", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            at, kind, prefix, protocol = line.split()
            self.seen.append((float(at), kind, prefix, int(protocol)))

    def first(self, kind: str, address: IPAddress, since: float, protocol: int | None = None) -> float | None:
        """When the first ``kind`` notification for ``address`` (of ``protocol``) at or after ``since`` came."""
        prefix = host_prefix(address)
        return next((at for at, k, p, proto in list(self.seen)
                     if at >= since and k == kind and p == prefix and protocol in (None, proto)), None)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def monitor(netns: str, prefixes: Sequence[str]) -> None:
    """The child of :class:`Monitor`: print "<monotonic> <new|del> <prefix> <protocol>" per
    route notification for ``prefixes`` in ``netns``, until terminated."""
    watched = set(prefixes)
    sock = route_socket(netns)
    try:  # run as soon as the kernel wakes it, not when a busy CPU frees up
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError as exc:
        print(f"route monitor in {netns}: no real-time priority ({exc}), stamps may be late", file=sys.stderr)
    print("ready", flush=True)
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # after a burst: later notifications still come
                continue
            raise
        now = time.monotonic()
        for note in notifications(data):
            if note.prefix in watched:
                print(f"{now:.6f} {note.kind} {note.prefix} {note.protocol}", flush=True)


@dataclasses.dataclass
class Fabric:
    node: Node
    tor: str
    node_bird: Bird
    tor_bird: Bird
    tor_routes: Monitor  # the ToR's kernel
    node_routes: Monitor  # the node's kernel


@contextlib.asynccontextmanager
async def bench_fabric(size: int) -> AsyncIterator[Fabric]:
    """A node as :func:`bench_node`, but its BIRD runs flock's rendered config from the
    start and peers (eBGP, v4 and v6) with a ToR BIRD in a namespace of its own; a route
    monitor watches the ToR's kernel. All removed at the end, also on failure."""
    netns, tor = names("node", "tor")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="flk-bench-", dir="/tmp"))
    (workdir / "node").mkdir()
    (workdir / "tor").mkdir()
    namespaces: list[str] = []
    birds: list[Bird] = []
    with cleanup(namespaces, birds, workdir):
        namespaces += [netns, tor]
        await asyncio.to_thread(build, netns)
        await asyncio.to_thread(build_tor, tor, netns)
        tor_text = tor_bird_config(TOR_V4, [(NODE_V4, NODE_ASN), (NODE_V6, NODE_ASN)], TOR_ASN)
        tor_bird = await asyncio.to_thread(Bird, tor, workdir / "tor", tor_text)
        birds.append(tor_bird)
        config = node_config(netns, workdir / "node")
        node_bird = await asyncio.to_thread(Bird, netns, workdir / "node", render(config))
        birds.append(node_bird)
        monitors: list[Monitor] = []
        try:
            monitors.append(Monitor(tor, (LONE, REF_NEW, REF_OLD)))
            monitors.append(Monitor(netns, (LONE,)))
            node = await make_node(config, size)
            try:
                yield Fabric(node, tor, node_bird, tor_bird, *monitors)
            finally:
                await node.routes.close()
        finally:
            for running in monitors:
                running.close()


def tor_prefixes(tor: str) -> set[str]:
    found = set()
    for family in ("-4", "-6"):
        for route in json.loads(ip(family, "-j", "route", "show", "proto", "bird", netns=tor) or "[]"):
            found.add(str(ipaddress.ip_network(route["dst"], strict=False)))
    return found


async def until(predicate: Callable[[], bool], what: str, limit: float = 120, every: float = 0.002) -> None:
    """Look every ``every`` s until ``predicate()``; RuntimeError naming ``what`` after ``limit`` s."""
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110 (the monitors stamp their own times)
                await asyncio.sleep(every)
    except TimeoutError:
        raise RuntimeError(f"timed out after {limit:g} s waiting for {what}") from None


async def at_tor(fabric: Fabric, addresses: Iterable[IPAddress], what: str) -> None:
    """Wait until the ToR's kernel has a route to each of ``addresses`` (a setup step)."""
    wanted = {host_prefix(a) for a in addresses}

    def there() -> bool:
        return wanted <= tor_prefixes(fabric.tor)

    await until(there, what, every=0.5)  # one ip dump per look


async def gone_at_tor(fabric: Fabric, address: IPAddress, since: float) -> float:
    """Milliseconds from ``since`` (time.monotonic) until the ToR's kernel deleted its route to ``address``."""
    await until(lambda: fabric.tor_routes.first("del", address, since) is not None,
                f"{host_prefix(address)} to leave the ToR's kernel", limit=60)
    return ((fabric.tor_routes.first("del", address, since) or since) - since) * 1000


async def retagged(fabric: Fabric, since: float) -> float:
    """Milliseconds from ``since`` until the node's kernel announced LONE's route re-tagged."""
    def seen() -> float | None:
        return fabric.node_routes.first("new", LONE, since, WITHDRAWN_PROTO)

    await until(lambda: seen() is not None, "the re-tag in the node's kernel", limit=10)
    return ((seen() or since) - since) * 1000


async def back_at_tor(fabric: Fabric, address: IPAddress, since: float) -> None:
    """Wait until the ToR routes ``address`` again, then a little longer (BGP, BIRDs idle)."""
    await until(lambda: fabric.tor_routes.first("new", address, since) is not None,
                f"{host_prefix(address)} back in the ToR's kernel", limit=60)
    await asyncio.sleep(0.15)


def ref_route(verb: str, address: IPAddress, protocol: int, netns: str) -> None:
    """``ip route <verb>`` of a one-hop route as flock writes it (pod 0's address, onlink)."""
    family = "-6" if address.version == 6 else "-4"
    via = next(a for a in pod_ips(0) if a.version == address.version)
    ip(family, "route", verb, host_prefix(address), "proto", str(protocol), "via", str(via), "dev", DEVS[0],
       "onlink", netns=netns)


def old_design_conf(current: str, advertised: Sequence[IPAddress]) -> str:
    """flock's bird.conf as it was before BIRD learned flock's routes (4cbd5a3^): no kernel
    protocol; the advertised prefixes listed in prefix sets the export filters check and
    originated by the static protocols. Withdrawing then meant rendering it without the
    prefix and ``birdc configure`` (a changed export filter, so BIRD re-runs the exports)."""
    text, count = re.subn(r"\nprotocol kernel flock_kernel_v[46] \{.*?\n\}\n", "\n", current, flags=re.S)
    assert count == 2, "two kernel protocols in flock's bird.conf"
    for family, version in (("v4", 4), ("v6", 6)):
        prefixes = [host_prefix(a) for a in advertised if a.version == version]
        listed = ",\n".join(f"\t{prefix}" for prefix in prefixes)
        define = f"define flock_anycast_{family} = [\n{listed}\n];\n" if prefixes else \
            f"define flock_anycast_{family} = [ ];\n"
        static = f"protocol static flock_originate_{family} {{\n\tipv{version};\n"
        routes = "".join(f"\troute {prefix} blackhole;\t# anycast\n" for prefix in prefixes)
        assert static in text, f"flock_originate_{family} in flock's bird.conf"
        text = text.replace(static, define + "\n" + static + routes)
        # The learned routes' branch, up to the end of its block (the last-resort prepends inside).
        text, count = re.subn(rf'if proto = "flock_kernel_{family}".*?\taccept;\n\t\}}\n',
                              f'if proto = "flock_originate_{family}" && net ~ flock_anycast_{family}\n'
                              f'\t\t&& net ~ flock_pools_{family} then accept;\n', text, flags=re.S)
        assert count == 1, f"flock_export_{family} takes flock_kernel_{family}"
    return text


def configure(bird: Bird) -> None:
    out = bird.birdc("configure")
    if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
        raise RuntimeError(f"birdc configure: {out.strip()}")


async def withdrawal(size: int, repeats: int) -> dict[str, list[float]]:
    """Withdrawal to the ToR with ``size`` other prefixes: flock's and both floors, ``repeats``
    times each (flock's and the new floor alternate; the old floor needs the old config)."""
    result: dict[str, list[float]] = {"flock": [], "pass": [], "retag": [], "new": [], "old": [], "configure": []}
    async with bench_fabric(size) as fabric:
        node, netns = fabric.node, fabric.node.netns
        await node.reconciler.reconcile(trigger="start")
        assert _reloads(node) == 0, "the node's BIRD already ran flock's bird.conf"
        await asyncio.to_thread(ref_route, "add", REF_NEW, PROTO, netns)
        await at_tor(fabric, [*others(size), LONE, REF_NEW], f"{size + 2} prefixes at the ToR")
        await asyncio.sleep(1)  # BIRDs and the ToR's kernel idle

        lone = node.served[PODS]
        for _ in range(repeats):
            # flock: the lone pod is not ready any more.
            start = time.monotonic()
            node.pods.observe("MODIFIED", pod_body(PODS, lone, ready=False))
            await node.reconciler.reconcile(trigger="pod")
            passed = time.monotonic()
            result["flock"].append(await gone_at_tor(fabric, LONE, start))
            result["pass"].append((passed - start) * 1000)
            result["retag"].append(await retagged(fabric, start))
            again = time.monotonic()
            node.pods.observe("MODIFIED", pod_body(PODS, lone, ready=True))
            await node.reconciler.reconcile(trigger="pod")
            await back_at_tor(fabric, LONE, again)

            # New floor: ip re-tags a route BIRD learned.
            start = time.monotonic()
            await asyncio.to_thread(ref_route, "replace", REF_NEW, WITHDRAWN_PROTO, netns)
            result["new"].append(await gone_at_tor(fabric, REF_NEW, start))
            again = time.monotonic()
            await asyncio.to_thread(ref_route, "replace", REF_NEW, PROTO, netns)
            await back_at_tor(fabric, REF_NEW, again)

        # Old floor: the same BIRD on the old design's static config (everything advertised
        # listed in it), the prefix withdrawn by configure + route delete.
        flocks = render(node.config)
        with_ref = old_design_conf(flocks, [*others(size), REF_OLD])
        without_ref = old_design_conf(flocks, others(size))
        await asyncio.to_thread(ref_route, "add", REF_OLD, PROTO, netns)
        node_bird = fabric.node_bird
        node_bird.config_path.write_text(with_ref)
        await asyncio.to_thread(configure, node_bird)
        await at_tor(fabric, [*others(size), REF_OLD], f"{size + 1} prefixes at the ToR, old design")
        await asyncio.sleep(1 + size / 5000)  # the switch re-sent every prefix: let it pass
        for _ in range(repeats):
            node_bird.config_path.write_text(without_ref)
            start = time.monotonic()
            await asyncio.to_thread(configure, node_bird)
            result["configure"].append((time.monotonic() - start) * 1000)
            await asyncio.to_thread(ref_route, "del", REF_OLD, PROTO, netns)
            result["old"].append(await gone_at_tor(fabric, REF_OLD, start))
            again = time.monotonic()
            node_bird.config_path.write_text(with_ref)
            await asyncio.to_thread(configure, node_bird)
            await asyncio.to_thread(ref_route, "add", REF_OLD, PROTO, netns)
            await back_at_tor(fabric, REF_OLD, again)
            await asyncio.sleep(0.1 + size / 20000)  # the configure's re-export to the ToR
    return result


def p50(values: list[float]) -> float:
    return statistics.median(values)


def print_withdrawal(size: int, figures: dict[str, list[float]]) -> None:
    n = len(figures["flock"])
    ours, new, old = p50(figures["flock"]), p50(figures["new"]), p50(figures["old"])
    print(f"  withdrawal to the ToR, {size} other prefixes, {n} runs each, p50 / max:")
    print(f"    flock: pod not ready -> ToR route gone   {ours:7.2f} / {max(figures['flock']):7.2f} ms"
          f"   (of which -> re-tag in the node's kernel {p50(figures['retag']):.2f} / {max(figures['retag']):.2f} ms;"
          f" the whole pass {p50(figures['pass']):.2f} / {max(figures['pass']):.2f} ms)")
    print(f"    new floor: ip route replace proto {WITHDRAWN_PROTO}   {new:7.2f} / {max(figures['new']):7.2f} ms"
          f"   flock {ours / new:.2f}x, {ours - new:+.2f} ms")
    print(f"    old floor: birdc configure + route del  {old:7.2f} / {max(figures['old']):7.2f} ms"
          f"   flock {ours / old:.2f}x   (configure alone {p50(figures['configure']):.2f} ms)")


async def bench_size(size: int, rounds: int, repeats: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, value in (await one_round(size)).items():
            results.setdefault(key, []).append(value)
    best = {k: min(v) for k, v in results.items()}
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{size} anycast routes (2 next hops each), 401 pods; best of {rounds} (median in brackets):", flush=True)
    if "ip_batch_plain" in best:  # resilient: the reference writes the same objects
        same = "ip -batch, same members+groups+routes"
        row("install", best["install"], best["ip_batch"], same)
        row("", best["install"], best["ip_batch_plain"], "(ip -batch, plain routes)")
        row("routes only", best["routes"], best["ip_batch"], same)
        row("", best["routes"], best["ip_batch_plain"], "(ip -batch, plain routes)")
        row("quiet tick", best["quiet"], best["ip_json_nh"], "ip -j route show + nexthop show")
        row("full view", best["full"], best["ip_json_nh"], "ip -j route show + nexthop show")
        row("", best["full"], best["ip_json"], "(ip -j route show alone)")
    else:
        row("install", best["install"], best["ip_batch"], "ip -batch, same routes (onlink)")
        row("routes only", best["routes"], best["ip_batch"], "ip -batch, same routes (onlink)")
        row("quiet tick", best["quiet"], best["ip_json"], "ip -j route show (v4 + v6)")
        row("full view", best["full"], best["ip_json"], "ip -j route show (v4 + v6)")
    row("one pod", best["one"], None)
    writes, reads = best["ip_batch"], best.get("ip_json_nh", best["ip_json"])
    print(f"  issue 10 (best): install {best['install'] / writes:.2f}x <= 3x: "
          f"{'ok' if best['install'] <= 3 * writes else 'NOT MET'}; full view {best['full'] / reads:.2f}x <= 1.5x: "
          f"{'ok' if best['full'] <= 1.5 * reads else 'NOT MET'}", flush=True)
    figures = await burst(size)
    print(f"  burst          250 pods Ready within 100 ms: {figures['passes']:.0f} passes (incl. the check) "
          f"taking {figures['busy']:.0f} ms in all, {figures['reloads']:.0f} BIRD reloads, "
          f"converged {figures['converged']:.0f} ms after the last event")
    print(f"  (medians: install {median['install']:.1f}, quiet {median['quiet']:.3f}, "
          f"full {median['full']:.1f}, one pod {median['one']:.1f} ms)", flush=True)
    withdrawn = await withdrawal(size, repeats)
    print_withdrawal(size, withdrawn)
    return withdrawn


def acceptance(withdrawals: dict[int, dict[str, list[float]]]) -> None:
    """Issue 10's bar: p50 within the new floor + 10 ms; 10k no more than 1.5x of 1k."""
    print("\nwithdrawal acceptance (p50):")
    for size, figures in withdrawals.items():
        ours, floor = p50(figures["flock"]), p50(figures["new"])
        verdict = "ok" if ours <= floor + 10 else "NOT MET"
        print(f"  {size:>6} other prefixes: {ours:.2f} ms <= floor {floor:.2f} + 10 ms: {verdict}")
    if 1000 in withdrawals and 10000 in withdrawals:
        ratio = p50(withdrawals[10000]["flock"]) / p50(withdrawals[1000]["flock"])
        print(f"  10k / 1k other prefixes: {ratio:.2f}x <= 1.5x: {'ok' if ratio <= 1.5 else 'NOT MET'}")


MODE = ["resilient"]
"""The ``datapath.nexthopGroups`` mode being measured."""


async def run(sizes: list[int], rounds: int, repeats: int, modes: Sequence[str] = ("resilient",)) -> None:
    for mode in modes:
        MODE[0] = mode
        print(f"\n=== datapath.nexthopGroups: {mode} ===", flush=True)
        withdrawals = {}
        for size in sizes:
            withdrawals[size] = await bench_size(size, rounds, repeats)
        acceptance(withdrawals)


def agent_logging() -> None:
    """Log as the agent does (flock.cli: ``kopf.configure()``, flock's and kopf's lines at
    info level in kopf's format), into /dev/null rather than a terminal, so that a pass pays
    for its log lines as in the agent; warnings and errors still reach stderr."""
    import kopf

    kopf.configure()
    sink = open(os.devnull, "w")  # for the life of the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sink)
    loud = logging.StreamHandler(sys.stderr)
    loud.setLevel(logging.WARNING)
    logging.getLogger().addHandler(loud)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the pass figures (best of)")
    parser.add_argument("--repeats", type=int, default=9, help="withdrawals per size and kind (p50, max)")
    parser.add_argument("--nexthop-groups", default="resilient,multipath",
                        help="datapath.nexthopGroups modes to measure, in order")
    parser.add_argument("--monitor", nargs="+", metavar=("NETNS", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.monitor:  # a Monitor's child process
        monitor(args.monitor[0], args.monitor[1:])
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.nexthop_groups.split(",")
    agent_logging()
    try:
        import uvloop  # the agent's loop

        uvloop.run(run(sizes, args.rounds, args.repeats, modes))
    except ImportError:
        asyncio.run(run(sizes, args.rounds, args.repeats, modes))


if __name__ == "__main__":
    main()
