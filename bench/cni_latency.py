"""How long does a runtime wait for flock-cni? ADD and DEL latency beside two references.

Sets up one node the way tests/cni do: a node netns ``flk-bench-<pid>-<hex>`` with its
BIRD, an emulated Kubernetes API (kmock, in this process, on 127.0.0.1), a real
``flock-agent`` process for that node and the static ``flock-cni`` (built from cni-shim/
by ``make -C cni-shim``, as the tests do) installed by ``flock.cni.install.install``
into a temporary CNI bin dir. Then, like a runtime living
in the node netns, it execs plugins with a CNI_* environment and the network config on
stdin, and takes the wall time from exec to result (process exited, stdout read):

  * ``flock-cni`` VERSION: the cost of merely starting the shim (answered without the agent)
  * ``flock-cni`` ADD for N pods in sequence (Ready pods with anycast IPs, so the agent's
    reconciler installs routes and reloads BIRD as the ADDs arrive), then DEL for each:
    half of them after a deletionTimestamp took them out of their routes (a rolling
    restart: each anycast IP keeps Ready replicas, so a terminated pod is no last resort),
    half while still next hops of a shared route (DEL waits for a pass); then how long
    after the last DEL's answer every record is gone (a pinned pod's pin and conntrack
    entries go after its DEL has answered, its record last)
  * the reference plugins from Debian's containernetworking-plugins doing the same job in
    the same pod namespaces: ``ptp`` with ``host-local`` IPAM (dual stack; a veth pair,
    addresses, routes; all in-process, Go): VERSION, ADD, DEL. IPv6 duplicate address
    detection is off in every namespace here, as flock has it on its own links; with it
    on, ptp waits for eth0's IPv6 address to settle and an ADD takes 1-2 s.

Prints p50/p99 (and mean, max) per row, and whether flock's ADD and DEL p50 are within
25 ms of ``ptp`` + ``host-local``'s (issue 12's bars). Needs root, BIRD 2 and the reference plugins;
touches nothing outside its own ``flk-*`` namespaces and a temporary folder, which it
removes at the end, also on failure or Ctrl-C. Every process it starts (BIRD, the agent)
is stopped by its PID.

    sudo .venv/bin/python bench/cni_latency.py [--pods 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kmock

from flock.cni.install import install

# The node is built with the test suite's helpers (tests/ is not installed).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.support import birdlab
from tests.support import netns as ns
from tests.support.agent import AgentProcess, free_port
from tests.support.apiserver import FakeCluster, declare_core_resources, pod_manifest, write_kubeconfig
from tests.support.cni import shim

T = TypeVar("T")

NODE = "node-a"
DEL_TERMINATED = "flock-cni DEL (pod terminated first)"
DEL_ROUTED = "flock-cni DEL (pod still a next hop)"
POD_CIDRS = ["203.0.113.0/24", "2001:db8:200::/64"]
POOLS = [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}]
REFERENCE_RANGES = ["192.0.2.0/24", "2001:db8:300::/64"]
REFERENCE_PLUGINS = pathlib.Path("/usr/lib/cni")
ADD_MARGIN = 0.025  # flock's ADD and DEL p50 may exceed ptp + host-local's by this much (issue 12)
CLONE_NEWNET = 0x40000000
EXEC_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


class Runtime:
    """Execs CNI plugins the way a runtime in the node netns does, and times each exec.

    Every exec starts on one thread that has entered the node netns (setns moves only
    that thread, and a child forked from it starts there), so a reference plugin makes
    its host-side veth in the node netns, as under containerd on that node.
    """

    def __init__(self, node_netns: str, bin_dir: pathlib.Path) -> None:
        self.node_netns = node_netns
        self.cni_path = f"{bin_dir}:{REFERENCE_PLUGINS}"
        self._jobs: list[tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="runtime", daemon=True)
        self._entered = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Runtime:
        self._thread.start()
        self._entered.wait()
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=130)

    def _serve(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.node_netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.node_netns}")
            finally:
                os.close(fd)
        except BaseException as exc:
            self._error = exc
            self._entered.set()
            return
        self._entered.set()
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if self._closed:  # interrupted: what is queued is not run
                    return
                job, future, loop = self._jobs.pop(0)
            try:
                result = job()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    async def run(self, job: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._wake:
            self._jobs.append((job, future, loop))
            self._wake.notify()
        return await future

    async def exec(self, plugin: pathlib.Path, command: str, container_id: str, netns: str,
                   config: dict[str, Any], args: str = "") -> tuple[float, int, dict[str, Any]]:
        """(seconds from exec to result, exit code, parsed stdout)."""
        env = {**EXEC_ENV, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_ARGS": args, "CNI_PATH": self.cni_path}
        stdin = json.dumps(config).encode()

        def timed() -> tuple[float, int, bytes]:
            start = time.perf_counter()
            done = subprocess.run([str(plugin)], input=stdin, capture_output=True, env=env, cwd="/", timeout=120)
            return time.perf_counter() - start, done.returncode, done.stdout + done.stderr

        seconds, code, out = await self.run(timed)
        try:
            parsed = json.loads(out) if out.strip() else {}
        except ValueError:
            parsed = {"raw": out.decode(errors="replace")}
        return seconds, code, parsed


class QuietAgent(AgentProcess):
    """flock-agent as a node runs it: without ``--verbose`` (debug logging of every
    netlink message would be part of the figures)."""

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("NODE_NAME", None)
        agent = pathlib.Path(sys.executable).with_name("flock-agent")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(agent), "--config", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def row(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:<44} {len(ms):>4} {percentile(ms, 50):>8.1f} {percentile(ms, 99):>8.1f} "
            f"{statistics.fmean(ms):>8.1f} {max(ms):>8.1f}")


@contextlib.contextmanager
def namespaces() -> Iterator[list[str]]:
    """Namespaces made through the yielded list are deleted at exit, also on Ctrl-C."""
    made: list[str] = []
    try:
        yield made
    finally:
        for name in reversed(made):
            ns.delete(name)


def make_netns(made: list[str], role: str) -> str:
    name = ns.new_name(role)
    made.append(name)  # before creating it: an interrupted create is still cleaned up
    ns.create(name)
    # No IPv6 duplicate address detection on new links: flock turns it off on its own
    # veths; ptp would otherwise wait ~1-2 s per ADD for eth0's address to settle.
    ns.sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", netns=name)
    return name


def reference_config(data_dir: pathlib.Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": str(data_dir),
                 "ranges": [[{"subnet": REFERENCE_RANGES[0]}], [{"subnet": REFERENCE_RANGES[1]}]],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]},
    }


def check_add(label: str, code: int, result: dict[str, Any]) -> list[str]:
    if code != 0:
        raise RuntimeError(f"{label} failed ({code}): {result}")
    ips = [ip["address"] for ip in result.get("ips", [])]
    if sorted(ipaddress.ip_interface(ip).version for ip in ips) != [4, 6]:
        raise RuntimeError(f"{label}: expected one IPv4 and one IPv6 address, got {ips}")
    return ips


async def bench(pods: int, work: pathlib.Path) -> None:
    with namespaces() as made, birdlab.Birds() as birds:
        node = make_netns(made, "bench")
        bird = birds.start(node, "router id 192.0.2.2;\nprotocol device {}\n")
        async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
            declare_core_resources(api)
            cluster = FakeCluster(api, server)
            cluster.create_namespace("default")
            cluster.create_node(NODE, POD_CIDRS)
            config = {
                "nodeName": NODE, "hostNetns": node, "stateDir": str(work / "state"),
                "cniSocket": str(work / "run" / "cni.sock"), "podCIDRs": POD_CIDRS, "anycastPools": POOLS,
                "tickSeconds": 2, "listen": f"127.0.0.1:{free_port()}",
                "bird": {"configPath": str(bird.config_path), "socket": str(bird.socket),
                         "routerId": "192.0.2.2", "asn": 65101, "peers": []},
            }
            bin_dir, conf_dir = work / "cni" / "bin", work / "cni" / "net.d"
            plugin, conf = install(bin_dir, conf_dir, config["cniSocket"], shim())
            conflist = json.loads(conf.read_text())
            flock_config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
            agent = QuietAgent(work, config, write_kubeconfig(work / "kubeconfig", cluster.url))
            agent.start()
            try:
                socket = pathlib.Path(config["cniSocket"])
                deadline = time.monotonic() + 60
                while not await asyncio.to_thread(socket.exists):
                    if not agent.alive() or time.monotonic() > deadline:
                        raise RuntimeError("flock-agent did not open its CNI socket:\n" + agent.log()[-3000:])
                    await asyncio.sleep(0.05)

                names = [f"bench-{i:03d}" for i in range(pods)]
                uids = {}
                for i, name in enumerate(names):
                    # Pods 2k and 2k+1 share their anycast IPs, so each IP has pods of both
                    # halves below: a terminated pod is then no last resort (which would stay a
                    # next hop, prepended, while no replica of its IPs is eligible).
                    k = i // 2 % 10
                    anycast = f"198.51.100.{10 + k} 2001:db8:100::{10 + k:x}"
                    created = await cluster.create_pod(pod_manifest(name, node=NODE, anycast=anycast, ready=True))
                    uids[name] = created["metadata"]["uid"]
                print(f"node {node}: agent up, {pods} Ready pods in the API; making {pods} pod namespaces…",
                      flush=True)
                netns = {name: make_netns(made, "bpod") for name in names}
                await asyncio.sleep(1)  # let the agent's watch see the pods (the usual case for an ADD)

                figures: dict[str, list[float]] = {}
                reference = REFERENCE_PLUGINS / "ptp"
                ref_config = reference_config(work / "host-local")
                with Runtime(node, bin_dir) as runtime:
                    for label, binary, cfg in (("flock-cni VERSION (process start only)", plugin, flock_config),
                                               ("ptp VERSION (process start only)", reference, ref_config)):
                        times = []
                        for i in range(pods):
                            seconds, code, out = await runtime.exec(binary, "VERSION", f"v{i}", "", cfg)
                            if code != 0 or "supportedVersions" not in out:
                                raise RuntimeError(f"{label}: {out}")
                            times.append(seconds)
                        figures[label] = times

                    given: set[str] = set()
                    adds, dels = [], []
                    for name in names:
                        container = f"flock-{name}"
                        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};"
                                f"K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID={uids[name]}")
                        seconds, code, out = await runtime.exec(plugin, "ADD", container, f"/run/netns/{netns[name]}",
                                                                flock_config, args)
                        given.update(check_add(f"flock-cni ADD {name}", code, out))
                        adds.append(seconds)
                    if len(given) != 2 * pods:
                        raise RuntimeError(f"flock-cni handed out duplicate addresses: {len(given)} for {pods} pods")
                    # Half the pods are terminated first, as in a rolling restart: by DEL time
                    # they are no next hop any more. The other half are DELeted while still
                    # next hops of a shared route, so each DEL first waits for a reconcile
                    # pass to take its veth out of the route.
                    terminated, routed = names[::2], names[1::2]
                    for name in terminated:
                        await cluster.mark_for_deletion(name)
                    await asyncio.sleep(2)  # the agent drops their next hops (ms) and reloads BIRD
                    for label, group in ((DEL_TERMINATED, terminated), (DEL_ROUTED, routed)):
                        dels = []
                        for name in group:
                            container = f"flock-{name}"
                            args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"
                            seconds, code, out = await runtime.exec(plugin, "DEL", container,
                                                                    f"/run/netns/{netns[name]}", flock_config, args)
                            if code != 0:
                                raise RuntimeError(f"flock-cni DEL {name} failed ({code}): {out}")
                            dels.append(seconds)
                        figures[label] = dels
                    figures[f"flock-cni ADD ({pods} pods in sequence)"] = adds
                    # A DEL answers once the veth is gone; the pod's pin and conntrack entries
                    # go after, then its record: all of them must be gone, and soon.
                    answered = time.monotonic()
                    records = work / "state" / "allocations"
                    while any(records.glob("*.json")):
                        if time.monotonic() - answered > 30:
                            raise RuntimeError(f"records left 30 s after the last DEL: {sorted(records.iterdir())}")
                        await asyncio.sleep(0.001)
                    cleanup = time.monotonic() - answered

                    adds, dels = [], []
                    for name in names:
                        container = f"ptp-{name}"
                        seconds, code, out = await runtime.exec(reference, "ADD", container,
                                                                f"/run/netns/{netns[name]}", ref_config)
                        check_add(f"ptp ADD {name}", code, out)
                        adds.append(seconds)
                    for name in names:
                        container = f"ptp-{name}"
                        seconds, code, out = await runtime.exec(reference, "DEL", container,
                                                                f"/run/netns/{netns[name]}", ref_config)
                        if code != 0:
                            raise RuntimeError(f"ptp DEL {name} failed ({code}): {out}")
                        dels.append(seconds)
                    figures[f"ptp + host-local ADD ({pods} pods in sequence)"] = adds
                    figures["ptp + host-local DEL"] = dels

                left = ns.sh("ip", "-br", "link", netns=node)
                if "flock" in left or "veth" in left:
                    raise RuntimeError(f"veths left on the node after DEL:\n{left}")
            finally:
                agent.stop()

    order = ["flock-cni VERSION (process start only)", f"flock-cni ADD ({pods} pods in sequence)", DEL_TERMINATED,
             DEL_ROUTED, "ptp VERSION (process start only)", f"ptp + host-local ADD ({pods} pods in sequence)",
             "ptp + host-local DEL"]
    print()
    print(f"{'exec → result (ms)':<44} {'n':>4} {'p50':>8} {'p99':>8} {'mean':>8} {'max':>8}")
    for label in order:
        print(row(label, figures[label]))
    start = statistics.median(figures["flock-cni VERSION (process start only)"])
    add = statistics.median(figures[f"flock-cni ADD ({pods} pods in sequence)"])
    delete = statistics.median(figures[DEL_TERMINATED])
    unroute = statistics.median(figures[DEL_ROUTED])
    print(f"\nflock-cni: the agent's share of a median ADD is {(add - start) * 1000:.1f} ms, "
          f"of a median DEL {(delete - start) * 1000:.1f} ms, {(unroute - start) * 1000:.1f} ms when the pod "
          "is still a next hop (median minus the median process start).")
    reference = statistics.median(figures[f"ptp + host-local ADD ({pods} pods in sequence)"])
    verdict = "met" if add <= reference + ADD_MARGIN else "NOT met"
    print(f"ADD p50 {add * 1000:.1f} ms vs ptp + host-local {reference * 1000:.1f} ms + {ADD_MARGIN * 1000:.0f} ms: "
          f"{verdict}")
    reference = statistics.median(figures["ptp + host-local DEL"])
    verdict = "met" if delete <= reference + ADD_MARGIN else "NOT met"
    print(f"DEL p50 (pod terminated first) {delete * 1000:.1f} ms vs ptp + host-local {reference * 1000:.1f} ms + "
          f"{ADD_MARGIN * 1000:.0f} ms: {verdict}")
    print(f"Every record gone (pins and conntrack entries removed after the answers) {cleanup * 1000:.1f} ms after "
          "the last DEL answered.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100, help="pods to ADD and DEL (default 100)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("cni_latency.py: run as root (network namespaces, veths, BIRD)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("bird", "birdc", "ip") if shutil.which(tool) is None]
    missing += [str(p) for p in (REFERENCE_PLUGINS / "ptp", REFERENCE_PLUGINS / "host-local") if not p.exists()]
    if missing:
        print(f"cni_latency.py: missing {', '.join(missing)} (scripts/install.sh installs them)", file=sys.stderr)
        return 1
    work = pathlib.Path(tempfile.mkdtemp(prefix="flk-bench-cni-"))
    try:
        asyncio.run(bench(args.pods, work))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
