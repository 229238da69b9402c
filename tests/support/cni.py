"""A node for CNI tests: a node netns, its BIRD, flock-agent (real process, kmock API),
and flock-cni installed into a CNI bin dir the way the chart's init container does.

flock-cni is the static executable users run: :func:`shim` builds it from
cni-shim/flock-cni.c (``make -C cni-shim``, once per session) and every test installs
and execs that build.

The ``cni_node`` fixture (tests/cni/conftest.py) starts one with :func:`start_cni_node`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import pathlib
import subprocess
from collections.abc import Callable
from typing import Any

from flock.cni.install import install
from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually
from tests.support.apiserver import FakeCluster, write_kubeconfig
from tests.support.config import NODE, POD_CIDRS, process_config

__all__ = ["ANY_SHARED", "NODE", "POD_CIDRS", "SHIM_DIR", "CniNode", "CniResult", "exec_shim", "node_veths",
           "shim", "start_cni_node"]

ANY_SHARED = "198.51.100.10 2001:db8:100::10"  # an anycast IP pair several test pods share
SHIM_DIR = pathlib.Path(__file__).resolve().parents[2] / "cni-shim"


@functools.cache
def shim() -> pathlib.Path:
    """cni-shim/flock-cni, built (or rebuilt after an edit) by its Makefile, once per session."""
    done = subprocess.run(["make", "-s", "-C", str(SHIM_DIR)], capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"make -C cni-shim failed (scripts/install.sh installs the compiler):\n"
                           f"{done.stdout}{done.stderr}")
    return SHIM_DIR / "flock-cni"


def exec_shim(env: dict[str, str], stdin: bytes | str, binary: pathlib.Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Exec flock-cni as a runtime does: only ``env``, the config on stdin, cwd /."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([str(binary or shim())], input=data, capture_output=True, env=env, timeout=timeout,
                          cwd="/", check=False)


@dataclasses.dataclass
class CniResult:
    code: int
    output: dict[str, Any]
    raw: str


@dataclasses.dataclass
class CniNode:
    netns: str
    cluster: FakeCluster
    agent: AgentProcess
    bin_dir: pathlib.Path
    conflist: dict[str, Any]
    make_netns: Callable[[str], str]

    @property
    def net_config(self) -> dict[str, Any]:
        """The single-plugin network config a runtime passes to flock-cni on stdin."""
        plugin = dict(self.conflist["plugins"][0])
        return {"cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"], **plugin}

    @property
    def state_dir(self) -> pathlib.Path:
        """The agent's stateDir (its allocation records are under ``allocations/``)."""
        return self.agent.workdir / "state"

    def records(self) -> list[dict[str, Any]]:
        """The agent's allocation records on disk, by file name."""
        return [json.loads(p.read_text()) for p in sorted((self.state_dir / "allocations").glob("*.json"))]

    async def exec_plugin(self, plugin: str, command: str, container_id: str, netns: str, *,
                    ifname: str = "eth0", args: str = "", config: dict[str, Any] | str | None = None,
                    extra_env: dict[str, str | None] | None = None) -> CniResult:
        """Exec a CNI plugin as a runtime does: CNI_* environment only, config on stdin.

        ``extra_env`` overrides the CNI_* variables; None leaves one out.
        """
        given: dict[str, str | None] = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": f"{self.bin_dir}:/usr/lib/cni",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        given.update(extra_env or {})
        env = {k: v for k, v in given.items() if v is not None}
        stdin = config if isinstance(config, str) else json.dumps(config or self.net_config)
        binary = self.bin_dir / plugin if (self.bin_dir / plugin).exists() else pathlib.Path("/usr/lib/cni") / plugin
        # In a thread: the emulated API server runs on this test's event loop, and the agent
        # may need it to answer this very request.
        done = await asyncio.to_thread(subprocess.run, [str(binary)], input=stdin, capture_output=True, text=True,
                                       env=env, timeout=60, cwd="/")
        raw = done.stdout.strip()
        return CniResult(done.returncode, json.loads(raw) if raw else {}, raw + done.stderr)

    async def cni(self, command: str, container_id: str, netns: str = "", *, pod: str = "",
                  namespace: str = "default", uid: str = "", args: str | None = None, ifname: str = "eth0",
                  config: dict[str, Any] | str | None = None,
                  extra_env: dict[str, str | None] | None = None) -> CniResult:
        """flock-cni with the CNI_ARGS kubelet's runtime passes for a pod (``args`` replaces them).

        Exec'd as a runtime finds it: ``<bin dir>/<type>``, i.e. ``flock`` -> ``flock-cni``.
        """
        if args is None and pod:
            args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};"
                    f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}")
        plugin_type = self.conflist["plugins"][0]["type"]
        return await self.exec_plugin(plugin_type, command, container_id, netns, args=args or "",
                                      ifname=ifname, config=config, extra_env=extra_env)

    def pod_netns(self) -> tuple[str, str]:
        """A new pod sandbox netns: (name, path)."""
        name = self.make_netns("pod")
        return name, f"/run/netns/{name}"


async def start_cni_node(make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster,
                         agents: list[AgentProcess], tmp_path: pathlib.Path, *, api_url: str | None = None,
                         pod_cidrs: list[str] = POD_CIDRS, **settings: Any) -> CniNode:
    """Node netns, BIRD, flock-cni installed, flock-agent started (stopped by ``agents``).

    ``api_url``: where the agent finds the API server (default: ``cluster``'s own URL);
    ``settings``: agent.yaml keys over :func:`tests.support.config.process_config`'s.
    """
    netns = make_netns("node")
    bird = birds.start(netns, "router id 192.0.2.2;\nprotocol device {}\n", directory=birds.directory("node"))
    cluster.create_namespace("default")
    cluster.create_node(NODE, pod_cidrs)
    config = process_config(tmp_path, bird, netns, podCIDRs=pod_cidrs, **settings)
    bin_dir, conf_dir = tmp_path / "cni" / "bin", tmp_path / "cni" / "net.d"
    _, conf = install(bin_dir, conf_dir, config["cniSocket"], shim())
    agent = AgentProcess(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", api_url or cluster.url))
    agents.append(agent)
    agent.start()
    node = CniNode(netns, cluster, agent, bin_dir, json.loads(conf.read_text()), make_netns)
    await eventually(lambda: pathlib.Path(config["cniSocket"]).exists(), within=60, what="the agent's CNI socket")
    return node


def node_veths(netns: str) -> set[str]:
    """flock's host-side veths in a node netns."""
    links = json.loads(subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {str(link["ifname"]) for link in links if link["ifname"].startswith("flock")}
