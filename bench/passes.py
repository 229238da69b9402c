"""What a reconcile pass costs at 100 / 1k / 10k anycast routes, beside references measured
in the same run.

A throw-away namespace ``flk-bench-<pid>-<hex>`` gets two host veths and 400 "pods"
(allocations whose next hops are addresses on the veths' subnets; every anycast route
has two next hops), a real BIRD, and a Reconciler wired to the real adapters
(NetlinkRoutes, BirdControl, flock's template). Figures, best of ``--rounds``:

  install       the first pass from empty (routes + bird.conf)    ref: ``ip -batch`` of the same routes
  routes only   NetlinkRoutes.apply of those N routes              ref: the same ``ip -batch``
  quiet tick    a tick after a settled pass                        ref: ``ip -j route show proto 201``
  full view     a tick with the periodic full kernel dump          ref: the same ``ip -j``
  one pod       one pod (of 400) not ready: its next hops leave    (no reference)
  withdrawal    a pod that alone serves one prefix goes: BIRD withdraws it, then the
                route goes                                          ref: ``birdc configure`` of that config
  burst         250 pods turn Ready within 100 ms with the loop running: passes, BIRD
                reloads, and the time from the last event until every next hop is in

Needs root, ``ip`` and ``bird``; touches nothing outside its namespace, which it deletes
at the end, also on failure.

    .venv/bin/python bench/passes.py [--sizes 100,1000,10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import pathlib
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from flock.adapters.bird import BirdControl, render_bird_conf
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.store import AllocationStore
from flock.core.birdview import bird_view
from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, PodRef
from flock.core.podcache import PodCache
from flock.core.routediff import DeleteRoute, ReplaceRoute, RouteEdit, diff_routes
from flock.core.settings import parse_config
from flock.metrics import Metrics
from flock.reconciler import Reconciler
from flock.testing import RecordingEvents

PROTO = 201
DEVS = ("flock0000aaaa", "flock0000bbbb")
PODS = 400  # each serves 2 * size / 400 prefixes: at most 50, under maxAnycastPerPod
V6_POOL = int(ipaddress.IPv6Address("2001:db8:100::"))


def ip(*args: str, netns: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], input=stdin, capture_output=True, text=True,
                          check=True, timeout=300)
    return done.stdout


def build(netns: str) -> None:
    subprocess.run(["ip", "netns", "add", netns], check=True)
    ip("link", "set", "lo", "up", netns=netns)
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


def pod_ips(n: int) -> tuple[IPAddress, ...]:
    """Pod n's eth0 addresses: on dev n % 2's subnets."""
    side, index = n % 2, n // 2
    return (ipaddress.ip_address(f"{('192.0.2', '203.0.113')[side]}.{2 + index}"),
            ipaddress.ip_address(f"2001:db8:{'ab'[side]}::{2 + index:x}"))


def anycast(k: int) -> IPAddress:
    """The k-th anycast address: all of 198.51.100.0/24 first, then IPv6."""
    return ipaddress.ip_address(f"198.51.100.{k + 1}") if k < 254 else ipaddress.IPv6Address(V6_POOL + k)


@dataclasses.dataclass
class Node:
    netns: str
    reconciler: Reconciler
    routes: NetlinkRoutes
    bird: BirdControl
    pods: PodCache
    store: AllocationStore
    config_path: pathlib.Path
    socket: pathlib.Path
    served: dict[int, list[IPAddress]]


def pod_body(n: int, addresses: list[IPAddress], ready: bool = True) -> dict[str, object]:
    return {"metadata": {"namespace": "bench", "name": f"pod-{n}", "uid": f"uid-{n}",
                         "annotations": {"flock.io/anycast": " ".join(map(str, addresses))}},
            "spec": {"nodeName": "node-a"},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


async def make_node(netns: str, size: int, workdir: pathlib.Path) -> Node:
    config = parse_config({
        "nodeName": "node-a", "stateDir": str(workdir / "state"), "hostNetns": netns,
        "anycastPools": [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
        "podCIDRs": ["192.0.2.0/24", "203.0.113.0/24", "2001:db8::/32"], "tickSeconds": 2, "maxAnycastPerPod": 64,
        "bird": {"routerId": "192.0.2.1", "asn": 65101, "configPath": str(workdir / "bird.conf"),
                 "socket": str(workdir / "bird.ctl"),
                 "peers": [{"address": "192.0.2.254", "asn": 65000}]}}, environ={})
    store = AllocationStore(config.state_dir)
    await store.load()
    # Every prefix k is served by pods k % PODS and (k + 1) % PODS; pod PODS serves one more alone.
    served: dict[int, list[IPAddress]] = {n: [] for n in range(PODS + 1)}
    for k in range(size):
        served[k % PODS].append(anycast(k))
        served[(k + 1) % PODS].append(anycast(k))
    served[PODS] = [anycast(size)]
    for n, addresses in served.items():
        await store.put(Allocation(ContainerID(f"c{n}"), PodRef("bench", f"pod-{n}", f"uid-{n}"),
                                   DEVS[n % 2], pod_ips(n), tuple(addresses), AllocationState.COMMITTED))
    pods = PodCache("node-a", max_anycast=64)
    pods.replace_all([pod_body(n, served[n]) for n in range(PODS + 1)], pods.watch_serial())
    routes = NetlinkRoutes(protocol=PROTO, netns=netns, timeout=120)
    await routes.start()
    bird = BirdControl(config_path=config.bird.config_path, socket=config.bird.socket, timeout=60)

    def render(active: frozenset[IPAddress]) -> str:
        return render_bird_conf(bird_view(config=config, anycast=active, pod_cidrs=config.pod_cidrs or ()), None)

    reconciler = Reconciler(config=config, store=store, pods=pods, routes=routes, bird=bird, render_bird=render,
                            events=RecordingEvents(), metrics=Metrics())
    return Node(netns, reconciler, routes, bird, pods, store, config.bird.config_path, config.bird.socket, served)


def start_bird(netns: str, workdir: pathlib.Path) -> subprocess.Popen[bytes]:
    conf = workdir / "bird.conf"
    conf.write_text("router id 192.0.2.1;\nprotocol device {}\n")
    process = subprocess.Popen(["ip", "netns", "exec", netns, "bird", "-f", "-c", str(conf),
                                "-s", str(workdir / "bird.ctl")], stderr=subprocess.DEVNULL)
    for _ in range(100):
        if (workdir / "bird.ctl").exists():
            return process
        time.sleep(0.05)
    raise RuntimeError("bird did not start")


@contextlib.asynccontextmanager
async def bench_node(size: int) -> AsyncIterator[Node]:
    """A fresh namespace, BIRD and wired Reconciler with ``size`` routes' worth of pods; all
    removed at the end, also on failure."""
    netns = f"flk-bench-{os.getpid()}-{secrets.token_hex(2)}"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="flk-bench-", dir="/tmp"))
    bird_process = None
    try:
        await asyncio.to_thread(build, netns)
        bird_process = await asyncio.to_thread(start_bird, netns, workdir)
        node = await make_node(netns, size, workdir)
        try:
            yield node
        finally:
            await node.routes.close()
    finally:
        if bird_process is not None:
            bird_process.terminate()
            await asyncio.to_thread(bird_process.wait, 10)
        await asyncio.to_thread(subprocess.run, ["ip", "netns", "delete", netns], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


async def timed(func: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await func()
    return (time.perf_counter() - start) * 1000


def ip_batch_ms(netns: str, lines: list[str]) -> float:
    start = time.perf_counter()
    ip("-batch", "-", netns=netns, stdin="\n".join(lines) + "\n")
    return (time.perf_counter() - start) * 1000


def ip_json_ms(netns: str) -> float:
    start = time.perf_counter()
    for family in ("-4", "-6"):
        ip(family, "-j", "route", "show", "table", "main", "proto", str(PROTO), netns=netns)
    return (time.perf_counter() - start) * 1000


def birdc_configure_ms(netns: str, socket: pathlib.Path) -> float:
    start = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", netns, "birdc", "-s", str(socket), "configure"],
                   capture_output=True, check=True, timeout=120)
    return (time.perf_counter() - start) * 1000


def row(name: str, ours: float, reference: float | None, ref_name: str = "") -> None:
    if reference is None:
        print(f"  {name:<14} {ours:10.2f} ms")
    else:
        print(f"  {name:<14} {ours:10.2f} ms   {ref_name:<34} {reference:9.2f} ms   {ours / reference:6.2f}x")


async def one_round(size: int) -> dict[str, float]:
    """Every figure once, in a fresh namespace with a fresh BIRD."""
    figures: dict[str, float] = {}
    async with bench_node(size) as node:
        netns, reconciler = node.netns, node.reconciler
        figures["install"] = await timed(lambda: reconciler.reconcile(trigger="start"))
        assert len(await node.routes.dump()) == size + 1, "every route installed"
        figures["quiet"] = await timed(lambda: reconciler.reconcile(trigger="tick"))
        figures["full"] = await timed(lambda: reconciler.reconcile(trigger="tick", full_view=True))
        figures["ip_json"] = await asyncio.to_thread(ip_json_ms, netns)
        node.pods.observe("MODIFIED", pod_body(7, node.served[7], ready=False))
        figures["one"] = await timed(lambda: reconciler.reconcile(trigger="pod"))
        node.pods.observe("MODIFIED", pod_body(PODS, node.served[PODS], ready=False))
        figures["withdrawal"] = await timed(lambda: reconciler.reconcile(trigger="pod"))
        assert len(await node.routes.dump()) == size, "the lone pod's prefix withdrawn"
        figures["configure"] = await asyncio.to_thread(birdc_configure_ms, netns, node.socket)

        # The route writes alone, and ip -batch of the same routes, from empty each.
        table = await node.routes.dump()
        await node.routes.apply([DeleteRoute(a) for a in table])
        edits = diff_routes(table, {})
        figures["routes"] = await timed(lambda: node.routes.apply(edits))
        await node.routes.apply([DeleteRoute(a) for a in table])
        figures["ip_batch"] = await asyncio.to_thread(ip_batch_ms, netns, batch_lines(edits))
    return figures


def batch_lines(edits: Sequence[RouteEdit]) -> list[str]:
    """The same routes as ``ip -batch`` input."""
    lines = []
    for edit in edits:
        assert isinstance(edit, ReplaceRoute)
        hops = " ".join(f"nexthop via {h.via} dev {h.dev}" for h in edit.nexthops)
        lines.append(f"route replace {edit.address}/{edit.address.max_prefixlen} proto {PROTO} {hops}")
    return lines


async def burst(size: int, count: int = 250, spread: float = 0.1) -> dict[str, float]:
    """``count`` not-ready pods turn Ready within ``spread`` seconds while the reconcile loop
    runs (tick 2 s): passes, BIRD reloads and the time from the last event to convergence."""
    async with bench_node(size) as node:
        for n in range(count):  # these pods start not ready
            node.pods.observe("MODIFIED", pod_body(n, node.served[n], ready=False))
        await node.reconciler.reconcile(trigger="start")
        passes_before, reloads_before = node.reconciler.passes, _reloads(node)
        running = asyncio.create_task(node.reconciler.run())
        try:
            for n in range(count):
                node.pods.observe("MODIFIED", pod_body(n, node.served[n], ready=True))
                node.reconciler.wake("pod")
                await asyncio.sleep(spread / count)
            last_event = time.perf_counter()
            while True:  # converged: every pod's next hops installed
                await node.reconciler.next_pass("bench")
                table = await node.routes.dump()
                if sum(len(hops) for hops in table.values()) == 2 * size + 1:
                    break
            converged = time.perf_counter() - last_event
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        return {"passes": node.reconciler.passes - passes_before, "reloads": _reloads(node) - reloads_before,
                "converged": converged * 1000}


def _reloads(node: Node) -> float:
    """BIRD reconfigurations so far (the reconciler's metric)."""
    return float(node.reconciler.metrics.bird_reloads.labels(result="ok")._value.get())


async def bench_size(size: int, rounds: int) -> None:
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, value in (await one_round(size)).items():
            results.setdefault(key, []).append(value)
    best = {k: min(v) for k, v in results.items()}
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{size} anycast routes (2 next hops each), 401 pods; best of {rounds} (median in brackets):")
    row("install", best["install"], best["ip_batch"], "ip -batch, same routes")
    row("routes only", best["routes"], best["ip_batch"], "ip -batch, same routes")
    row("quiet tick", best["quiet"], best["ip_json"], "ip -j route show proto 201")
    row("full view", best["full"], best["ip_json"], "ip -j route show proto 201")
    row("one pod", best["one"], None)
    row("withdrawal", best["withdrawal"], best["configure"], "birdc configure, same config")
    figures = await burst(size)
    print(f"  burst          250 pods Ready within 100 ms: {figures['passes']:.0f} passes (incl. the check), "
          f"{figures['reloads']:.0f} BIRD reloads, converged {figures['converged']:.0f} ms after the last event")
    print(f"  (medians: install {median['install']:.1f}, quiet {median['quiet']:.3f}, "
          f"full {median['full']:.1f}, withdrawal {median['withdrawal']:.1f} ms)")


async def run(sizes: list[int], rounds: int) -> None:
    for size in sizes:
        await bench_size(size, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        import uvloop  # the agent's loop

        uvloop.run(run(sizes, args.rounds))
    except ImportError:
        asyncio.run(run(sizes, args.rounds))


if __name__ == "__main__":
    main()
