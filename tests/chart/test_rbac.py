"""The chart's ClusterRole grants exactly the API calls flock-agent makes: no more, no less.

A short real session: flock-agent (a kopf operator, a separate process) against kmock,
configured with the chart's own agent.yaml and run with only the Linux capabilities the
chart gives its container. The agent lists and watches its node's pods, reads the Node,
answers two CNI ADDs (one for a pod the API does not show yet, which makes it GET that
pod), advertises the Ready pod's anycast IPs and posts Events. Every request it sent is
mapped to the RBAC permission the API server would check (tests/support/rbac.py), and
that set must equal the set the rendered ClusterRole grants.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from flock.cni.install import install
from tests.chart.rendering import Rendered, render, run_render_config
from tests.support import birdlab, rbac
from tests.support.agent import AgentProcess, eventually, free_port
from tests.support.apiserver import FakeCluster, pod_manifest, write_kubeconfig
from tests.support.cni import shim

pytestmark = [pytest.mark.bird, pytest.mark.netns, pytest.mark.kopf, pytest.mark.slow]

NODE, ROUTER_ID = "node-a", "192.0.2.2"
POD_CIDRS = ["203.0.113.0/24", "2001:db8:200::/64"]
ANYCAST = "198.51.100.10, 2001:db8:100::10"
TRY_AGAIN_LATER = 11  # CNI error code
VALUES = {"anycastPools": [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
          "bird": {"asn": 65101}, "tickSeconds": 0.5}


class CappedAgent(AgentProcess):
    """flock-agent with only ``capabilities`` (as a container that drops ALL and adds them).

    setpriv limits the bounding set before exec: a root process then has exactly those
    capabilities, and so have its children (bird -p, birdc). It execs, so the PID that
    AgentProcess stops is the agent's own.
    """

    def __init__(self, *args: Any, capabilities: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capabilities = capabilities

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "NODE_NAME": NODE}
        agent = pathlib.Path(sys.executable).with_name("flock-agent")
        bounding = ",".join(["-all", *(f"+{c.lower()}" for c in self.capabilities)])
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
                 str(agent), "--config", str(self.config_path), "--verbose"],
                stdout=log, stderr=subprocess.STDOUT, env=env)


def chart_agent_config(rendered: Rendered, tmp: pathlib.Path, node_netns: str, bird_dir: pathlib.Path
                       ) -> dict[str, Any]:
    """The chart's agent.yaml after its render-config step; in-pod paths moved under ``tmp``."""
    done, path = run_render_config(rendered, tmp, host_ips=ROUTER_ID, node=NODE)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    assert "nodeName" not in config  # from NODE_NAME, as the downward API sets it
    # The test's host /proc stands in for the chart's /host/proc mount.
    config.update(hostNetns=node_netns, procPath="/proc", stateDir=str(tmp / "state"),
                  cniSocket=str(tmp / "run" / "cni.sock"), listen=f"127.0.0.1:{free_port()}")
    config["bird"].update(configPath=str(bird_dir / "bird.conf"), socket=str(bird_dir / "bird.ctl"))
    return config


async def cni_add(bin_dir: pathlib.Path, conf_dir: pathlib.Path, *, container_id: str, netns: str,
                  pod: str, uid: str) -> dict[str, Any]:
    """Exec flock-cni ADD as a container runtime does (CNI_* environment, config on stdin)."""
    conflist = json.loads(next(conf_dir.glob("*.conflist")).read_text())
    net_config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": container_id, "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                       f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"}
    for _ in range(60):
        # In a thread: kmock runs on this test's event loop and the agent may need it meanwhile.
        done = await asyncio.to_thread(subprocess.run, [str(bin_dir / "flock-cni")], input=json.dumps(net_config),
                                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
        if done.returncode == 0 or json.loads(done.stdout or "{}").get("code") != TRY_AGAIN_LATER:
            break
        await asyncio.sleep(0.5)  # the agent is starting: a runtime retries too
    assert done.returncode == 0, f"CNI ADD {pod}: {done.stdout} {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_cluster_role_grants_exactly_the_api_calls_the_agent_makes(
    make_netns: Callable[[str], str], birds: birdlab.Birds, cluster: FakeCluster, agents: list[AgentProcess],
    tmp_path: pathlib.Path,
) -> None:
    rendered = render(VALUES)
    node = make_netns("node")
    bird_dir = birds.directory("node")
    birds.start(node, f"router id {ROUTER_ID};\nprotocol device {{}}\n", directory=bird_dir)
    cluster.create_namespace("default")
    cluster.create_node(NODE, POD_CIDRS)

    config = chart_agent_config(rendered, tmp_path, node, bird_dir)
    bin_dir, conf_dir = tmp_path / "cni" / "bin", tmp_path / "cni" / "net.d"
    install(bin_dir, conf_dir, config["cniSocket"], shim())
    capabilities = rendered.container("agent")["securityContext"]["capabilities"]["add"]
    agent = CappedAgent(tmp_path, config, write_kubeconfig(tmp_path / "kubeconfig", cluster.url),
                        capabilities=capabilities)
    agents.append(agent)
    agent.start()
    await eventually(lambda: pathlib.Path(config["cniSocket"]).exists(), within=30, what="the agent's CNI socket")

    # The runtime asks for a pod the agent's watch has not delivered (here: not in the API
    # at all): the agent reads it from the API to learn its anycast annotation.
    await cni_add(bin_dir, conf_dir, container_id="c-early-1", netns=make_netns("pod"), pod="early-1",
                  uid=str(uuid.uuid4()))

    web = await cluster.create_pod(pod_manifest("web-1", node=NODE, anycast=ANYCAST, ready=True))
    await cni_add(bin_dir, conf_dir, container_id="c-web-1", netns=make_netns("pod"), pod="web-1",
                  uid=web["metadata"]["uid"])
    await eventually(lambda: len(cluster.events("AnycastAdvertised")) == 1, within=60,
                     what="the AnycastAdvertised Event for the v4 and v6 anycast IPs")
    assert agent.alive(), agent.log()

    needed: set[rbac.Permission] = set()
    non_resource: set[rbac.NonResource] = set()
    for request in cluster.agent_requests():
        permission = rbac.required(request)
        if isinstance(permission, rbac.Permission):
            needed.add(permission)
        else:
            non_resource.add(permission)
    granted = rbac.granted(rendered.one("ClusterRole")["rules"])

    assert needed == granted, (
        f"the agent needed but the ClusterRole lacks: {sorted(map(str, needed - granted))}; "
        f"the ClusterRole grants but the agent never used: {sorted(map(str, granted - needed))}")
    assert all(rbac.is_discovery(item) for item in non_resource), \
        f"non-resource requests beyond discovery: {sorted(non_resource)}"

    # The role is bound to the DaemonSet's service account.
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == rendered.one("ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": rendered.pod_spec["serviceAccountName"],
                                    "namespace": "kube-system"}]
