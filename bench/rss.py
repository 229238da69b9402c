"""How much memory does flock-agent hold on a busy node? Its RSS beside references.

Sets up one node the way tests/cni do: a node netns ``flk-rss-<pid>-<hex>`` with its
BIRD, the lab's API emulator (flock.lab.apiserver.Emulator: field selectors honoured, in
this process, on 127.0.0.1) and a real ``flock-agent`` process (no ``--verbose``) for
that node. The API holds ``--others`` pods on other nodes (the agent's field selector
keeps them out) and ``--pods`` Ready pods on this node with 4 anycast IPs each (two
IPv4, two IPv6; every address served by two pods: 2 x pods routes of two next hops).
Then, acting as the runtime, it sends a CNI ADD for every local pod straight to the
agent's CNI socket (the framing flock-cni uses), each with a pod netns of its own, and
waits until the kernel routes every anycast address over both its pods.

Prints VmRSS and VmHWM (the peak) from /proc/<pid>/status of the agent at three moments
(started, its pods listed but none plumbed; converged; after a full kernel view, the
periodic drift-repair pass)
beside, measured in the same run: a bare ``python``, a ``python`` that imported
flock.agent (flock's code and its libraries, pyroute2 among them), and one that imported
flock.cli and flock.operator (kopf too: all that flock-agent loads, nothing running).

Needs root, ``ip`` and BIRD 2; touches nothing outside its own ``flk-*`` namespaces and
a temporary folder, which it removes at the end, also on failure or Ctrl-C. Every
process it starts (BIRD, the agent, the reference interpreters) is stopped by its PID.

    .venv/bin/python bench/rss.py [--pods 250] [--others 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kmock

from flock.lab.apiserver import Emulator

# The node is built with the test suite's helpers (tests/ is not installed).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tests.support import birdlab
from tests.support import netns as ns
from tests.support.agent import AgentProcess, free_port
from tests.support.apiserver import FakeCluster, declare_core_resources, pod_manifest, write_kubeconfig

NODE = "node-a"
POD_CIDRS = ["203.0.113.0/24", "2001:db8:200::/64"]  # 253 IPv4 addresses: --pods at most 253
POOLS = [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}]
PROTO = 201  # the agent's default routeProtocol
NETWORK = {"cniVersion": "1.0.0", "name": "flock", "type": "flock"}
RESYNC_SECONDS = 4  # the agent's full kernel view: every 4 s here (default 30)


class QuietAgent(AgentProcess):
    """flock-agent as a node runs it: without ``--verbose``."""

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("NODE_NAME", None)
        agent = pathlib.Path(sys.executable).with_name("flock-agent")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(agent), "--config", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    rss, hwm = (int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
                for key in ("VmRSS", "VmHWM"))
    return rss / 1024, hwm / 1024


def reference(code: str) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``python -c code`` once ``code`` ran, MiB: the interpreter reports
    its own and exits."""
    script = f"{code}\nimport pathlib, sys\nsys.stdout.write(pathlib.Path('/proc/self/status').read_text())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    rss, hwm = (int(re.search(rf"^{key}:\s+(\d+) kB", done.stdout, re.M).group(1))  # type: ignore[union-attr]
                for key in ("VmRSS", "VmHWM"))
    return rss / 1024, hwm / 1024


def anycast(i: int, pods: int) -> list[str]:
    """Pod i's 4 anycast IPs: pods i and i + pods/2 serve the same ones."""
    k = i % (pods // 2)
    return [f"198.51.100.{1 + k}", f"198.51.100.{1 + pods // 2 + k}",
            f"2001:db8:100::{1 + k:x}", f"2001:db8:100::1:{1 + k:x}"]


async def cni(socket_path: pathlib.Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request on the agent's CNI socket, framed as flock-cni frames it: (exit code, result)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        request = json.dumps({"env": env, "stdin": json.dumps(NETWORK)}).encode()
        writer.write(len(request).to_bytes(4, "big") + request)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(4), "big")
        answer = json.loads(await reader.readexactly(size))
    finally:
        writer.close()
    return int(answer["exitCode"]), json.loads(answer["stdout"] or "{}")


def routed(node: str) -> tuple[int, int]:
    """(anycast routes, their next hops) in the node netns, per ``ip -j``: the agent's
    protocol's routes through a gateway (its pods' own routes on their veths have none)."""
    routes = hops = 0
    for family in ("-4", "-6"):
        out = ns.sh("ip", "-n", node, family, "-j", "route", "show", "proto", str(PROTO))
        for route in json.loads(out or "[]"):
            through = route.get("nexthops") or ([route] if "gateway" in route else [])
            routes += bool(through)
            hops += len(through)
    return routes, hops


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
    ns.sh("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", netns=name)
    return name


async def wait(what: str, agent: AgentProcess, check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        if not agent.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}:\n" + agent.log()[-3000:])
        await asyncio.sleep(0.1)


async def bench(pods: int, others: int, work: pathlib.Path) -> None:
    complaints: list[str] = []
    figures: list[tuple[str, tuple[float, float]]] = [
        ("python -c pass", reference("pass")),
        ("python -c 'import flock.agent'", reference("import flock.agent")),
        ("python -c 'import flock.cli, flock.operator'", reference("import flock.cli, flock.operator")),
    ]
    with namespaces() as made, birdlab.Birds() as birds:
        node = make_netns(made, "rss")
        bird = birds.start(node, "router id 192.0.2.2;\nprotocol device {}\n")
        async with Emulator() as api, kmock.Server(api) as server:
            declare_core_resources(api)
            cluster = FakeCluster(api, server)
            cluster.create_namespace("default")
            cluster.create_node(NODE, POD_CIDRS)
            # Stored directly, before the agent starts: it finds them in its first LIST.
            for i in range(others):
                name = f"other-{i:05d}"
                api.objects["v1/pods", "default", name] = pod_manifest(
                    name, node=f"node-{i % 100:02d}", anycast=" ".join(anycast(i, 250)), ready=True)
            uids = {}
            for i in range(pods):
                name = f"local-{i:03d}"
                body = pod_manifest(name, node=NODE, anycast=" ".join(anycast(i, pods)), ready=True)
                api.objects["v1/pods", "default", name] = body
                uids[name] = body["metadata"]["uid"]
            print(f"API: {pods} pods on {NODE}, {others} on 100 other nodes; making {pods} pod namespaces…",
                  flush=True)
            pod_netns = {name: make_netns(made, "rpod") for name in uids}

            socket_path = work / "run" / "cni.sock"
            config = {
                "nodeName": NODE, "hostNetns": node, "stateDir": str(work / "state"), "cniSocket": str(socket_path),
                "podCIDRs": POD_CIDRS, "anycastPools": POOLS, "tickSeconds": 2, "resyncSeconds": RESYNC_SECONDS,
                "maxAnycastPerPod": 8, "listen": f"127.0.0.1:{free_port()}",
                "bird": {"configPath": str(bird.config_path), "socket": str(bird.socket),
                         "routerId": "192.0.2.2", "asn": 65101, "peers": []},
            }
            agent = QuietAgent(work, config, write_kubeconfig(work / "kubeconfig", cluster.url))
            agent.start()
            try:
                assert agent.process is not None
                pid = agent.process.pid
                await wait("the agent's readiness", agent, lambda: agent.http_status("/readyz") == 200, 120)
                await agent.wait_for_passes(2, within=60)
                figures.append(("flock-agent, started (the pods listed, none plumbed)", memory(pid)))

                started = time.monotonic()
                for name, netns in pod_netns.items():
                    container = uuid.uuid5(uuid.NAMESPACE_URL, name).hex
                    code, result = await cni(socket_path, {
                        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": container, "CNI_NETNS": f"/run/netns/{netns}",
                        "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
                        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};"
                                    f"K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID={uids[name]}"})
                    if code != 0:
                        raise RuntimeError(f"CNI ADD {name} failed ({code}): {result}")
                want = (2 * pods, 4 * pods)  # every address on two pods
                await wait(f"{want[0]} routes of {want[1]} next hops", agent, lambda: routed(node) == want, 120)
                print(f"{pods} ADDs and every route in: {time.monotonic() - started:.1f} s", flush=True)
                await agent.wait_for_passes(2, within=60)
                figures.append((f"flock-agent, {pods} pods x 4 anycast IPs, converged", memory(pid)))
                await asyncio.sleep(RESYNC_SECONDS + 1)  # a full kernel view on the way
                await agent.wait_for_passes(2, within=60)
                if routed(node) != want:
                    raise RuntimeError("routes changed while the node was quiet")
                figures.append(("flock-agent, then a full kernel view", memory(pid)))
            finally:
                agent.stop()
            complaints = [line for line in agent.log().splitlines() if "WARNING" in line or "ERROR" in line]

    print(f"\nflock-agent RSS: {pods} local pods x 4 anycast IPs ({2 * pods} routes of 2 next hops), "
          f"{others} pods on other nodes in the API:")
    print(f"  {'process':<58} {'VmRSS':>9} {'VmHWM':>9}")
    for name, (rss, hwm) in figures:
        print(f"  {name:<58} {rss:6.1f} MiB {hwm:6.1f} MiB")
    print(f"  (the agent logged {len(complaints)} warnings or errors{': ' if complaints else ''}"
          f"{' | '.join(complaints[:3])})")
    loaded = figures[2][1][0]
    converged = figures[-1][1][0]
    print(f"\nflock-agent converged holds {converged:.1f} MiB: {converged - loaded:.1f} MiB above the interpreter "
          f"with everything it imports ({converged / loaded:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pods", type=int, default=250, help="local pods, even, at most 252 (default 250)")
    parser.add_argument("--others", type=int, default=10000, help="pods on other nodes in the API (default 10000)")
    args = parser.parse_args()
    if args.pods % 2 or not 2 <= args.pods <= 252:
        parser.error("--pods must be even, 2..252 (one IPv4 pod CIDR of 253 addresses)")
    if os.geteuid() != 0:
        print("rss.py: run as root (network namespaces, veths, BIRD)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("bird", "birdc", "ip") if shutil.which(tool) is None]
    if missing:
        print(f"rss.py: missing {', '.join(missing)} (scripts/install.sh installs them)", file=sys.stderr)
        return 1
    work = pathlib.Path(tempfile.mkdtemp(prefix="flk-bench-rss-"))
    try:
        asyncio.run(bench(args.pods, args.others, work))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped and removed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
