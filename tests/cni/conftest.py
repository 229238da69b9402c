"""A node for CNI tests: a node netns, its BIRD, flock-agent (real process, kmock API),
and flock-cni installed into a CNI bin dir the way the chart's init container does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from flock.cni.install import install
from tests.support import birdlab
from tests.support.agent import AgentProcess, eventually, free_port
from tests.support.apiserver import FakeCluster, write_kubeconfig

NODE = "node-a"
POD_CIDRS = ["203.0.113.0/24", "2001:db8:200::/64"]
ANY_SHARED = "198.51.100.10 2001:db8:100::10"  # an anycast IP pair several test pods share
POOLS = [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}]
NODE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


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
                  namespace: str = "default", uid: str = "", **kwargs: Any) -> CniResult:
        """flock-cni with the CNI_ARGS kubelet's runtime passes for a pod.

        Exec'd as a runtime finds it: ``<bin dir>/<type>``, i.e. ``flock`` -> ``flock-cni``.
        """
        args = kwargs.pop("args", None)
        if args is None and pod:
            args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};"
                    f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}")
        plugin_type = self.conflist["plugins"][0]["type"]
        return await self.exec_plugin(plugin_type, command, container_id, netns, args=args or "", **kwargs)

    def pod_netns(self) -> tuple[str, str]:
        """A new pod sandbox netns: (name, path)."""
        name = self.make_netns("pod")
        return name, f"/run/netns/{name}"


def agent_config(netns: str, tmp: pathlib.Path, bird: birdlab.RunningBird,
                 pod_cidrs: list[str] = POD_CIDRS) -> dict[str, Any]:
    return {
        "nodeName": NODE, "hostNetns": netns, "stateDir": str(tmp / "state"),
        "cniSocket": str(tmp / "run" / "cni.sock"), "podCIDRs": pod_cidrs, "anycastPools": POOLS,
        "tickSeconds": 0.5, "listen": f"127.0.0.1:{free_port()}",
        "bird": {"configPath": str(bird.config_path), "socket": str(bird.socket),
                 "routerId": "192.0.2.2", "asn": 65101, "peers": []},
    }


@pytest.fixture
async def cni_node(request, make_netns, birds, cluster: FakeCluster, agents,  # type: ignore[no-untyped-def]
                   tmp_path: pathlib.Path) -> AsyncIterator[CniNode]:
    """Indirect parameter (optional): the node's pod CIDRs."""
    pod_cidrs = getattr(request, "param", POD_CIDRS)
    netns = make_netns("node")
    bird = birds.start(netns, "router id 192.0.2.2;\nprotocol device {}\n", directory=birds.directory("node"))
    cluster.create_namespace("default")
    cluster.create_node(NODE, pod_cidrs)
    config = agent_config(netns, tmp_path, bird, pod_cidrs)
    bin_dir, conf_dir = tmp_path / "cni" / "bin", tmp_path / "cni" / "net.d"
    _, conf = install(bin_dir, conf_dir, config["cniSocket"], NODE_PYTHON)
    agent = AgentProcess(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", cluster.url))
    agents.append(agent)
    agent.start()
    node = CniNode(netns, cluster, agent, bin_dir, json.loads(conf.read_text()), make_netns)
    await eventually(lambda: pathlib.Path(config["cniSocket"]).exists(), within=60, what="the agent's CNI socket")
    yield node


def node_anycast(netns: str, prefix: str) -> list[tuple[str, str]]:
    """(via, dev) of flock's route to an anycast prefix in a node netns: [] when there is none."""
    family = "-6" if ":" in prefix else "-4"
    shown = json.loads(subprocess.run(["ip", "-n", netns, family, "-j", "route", "show", prefix, "proto", "201"],
                                   capture_output=True, text=True, check=True).stdout or "[]")
    if not shown:
        return []
    route = shown[0]
    if "nexthops" in route:
        return sorted((h["gateway"], h["dev"]) for h in route["nexthops"])
    return [(route["gateway"], route["dev"])]


def node_veths(netns: str) -> set[str]:
    """flock's host-side veths in a node netns."""
    links = json.loads(subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout)
    return {link["ifname"] for link in links if link["ifname"].startswith("flock")}


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None or pathlib.Path(f"/usr/lib/cni/{name}").exists()
