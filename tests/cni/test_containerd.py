"""A real runtime calls flock: containerd's CRI plugin, in the node netns, as under kubelet.

containerd (Debian's) runs inside the node netns of the ``cni_node`` fixture with a
conf dir holding flock's conflist and a bin dir holding the static flock-cni (the build
of cni-shim/), both written by ``flock.cni.install.install``. The conflist's socket is a
recorder that relays every request to that node's agent and keeps its CNI_* environment
(``RequestRecorder``). The test is kubelet: it creates the Pod in the API, then
RunPodSandbox / StopPodSandbox / RemovePodSandbox through the CRI gRPC API
(``tests/support/containerd.py`` has the how and why).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pathlib
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from flock.cni.install import install
from tests.support.agent import eventually
from tests.support.apiserver import pod_manifest
from tests.support.cni import NODE, POD_CIDRS, CniNode, shim
from tests.support.containerd import (
    Containerd,
    RequestRecorder,
    build_pause_image,
    missing_tools,
    sandbox_netns_path,
    sandbox_pod_ips,
    start_containerd,
)
from tests.support.environment import UNDER_CI
from tests.support.netns import host_ifname, sh

pytestmark = [pytest.mark.netns, pytest.mark.bird, pytest.mark.kopf, pytest.mark.slow, pytest.mark.timeout(300)]

ANYCAST = "198.51.100.30 2001:db8:100::30"


@pytest.fixture
def requests(cni_node: CniNode, tmp_path: pathlib.Path) -> Iterator[RequestRecorder]:
    """Between flock-cni and the node's agent: records what the runtime asked."""
    recorder = RequestRecorder(tmp_path / "cni-requests.sock", cni_node.conflist["plugins"][0]["socket"])
    try:
        yield recorder
    finally:
        recorder.close()


@pytest.fixture
async def containerd(cni_node: CniNode, requests: RequestRecorder, tmp_path: pathlib.Path
                     ) -> AsyncIterator[Containerd]:
    missing = missing_tools()
    if missing:
        message = f"containerd test needs: {', '.join(missing)} (scripts/install.sh installs them)"
        if UNDER_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    rundir = tmp_path / "ctr"
    bin_dir, conf_dir = rundir / "cni" / "bin", rundir / "cni" / "conf"
    install(bin_dir, conf_dir, str(requests.path), shim())
    image = build_pause_image(rundir / "pause.oci.tar")
    # On a thread: the agent talks to the API this test's event loop serves all along.
    ctr = await asyncio.to_thread(start_containerd, cni_node.netns, rundir, cni_bin_dir=bin_dir,
                                  cni_conf_dir=conf_dir)
    try:
        await asyncio.to_thread(ctr.import_image, image)
        yield ctr
    finally:
        await asyncio.to_thread(ctr.stop)
        # Shown by pytest only when the test failed.
        print(f"--- {ctr.log_path} (last 80 lines) ---")
        print("\n".join(line[:400] for line in ctr.log().splitlines()[-80:]))


def addresses(netns_path: str, dev: str) -> set[str]:
    shown = json.loads(subprocess.run(["nsenter", f"--net={netns_path}", "ip", "-j", "addr", "show", "dev", dev],
                                      capture_output=True, text=True, check=True, timeout=30).stdout)
    return {f"{a['local']}/{a['prefixlen']}" for link in shown for a in link["addr_info"] if a["scope"] != "link"}


def host_links(node: CniNode) -> set[str]:
    return {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show", netns=node.netns))}


async def test_containerd_sandbox_gets_flock_network_and_both_dels_succeed(
        cni_node: CniNode, containerd: Containerd, requests: RequestRecorder) -> None:
    node = cni_node
    pod = await node.cluster.create_pod(pod_manifest("web-ctr", node=NODE, anycast=ANYCAST))
    uid = pod["metadata"]["uid"]
    # containerd execs <bin dir>/<type>: "flock", the link to flock-cni, the static build.
    plugin = containerd.rundir / "cni" / "bin" / "flock"
    assert plugin.resolve().read_bytes() == shim().read_bytes()

    # RunPodSandbox → ADD, with the pod's K8S_POD_* args.
    with requests.watch() as run:
        sandbox = await asyncio.to_thread(containerd.run_pod_sandbox, name="web-ctr", namespace="default", uid=uid)
    assert f"pod plumbed pod=default/web-ctr container={sandbox[:12]}" in node.agent.log()
    [add] = run.execs
    assert add.command == "ADD"
    assert add.env["CNI_CONTAINERID"] == sandbox
    assert add.env["CNI_IFNAME"] == "eth0"
    assert add.args | {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-ctr", "K8S_POD_UID": uid,
                       "K8S_POD_INFRA_CONTAINER_ID": sandbox} == add.args
    [record] = node.records()
    assert record["containerID"] == sandbox
    assert record["pod"] == {"namespace": "default", "name": "web-ctr", "uid": uid}
    assert record["state"] == "committed"

    status, info = await asyncio.to_thread(containerd.client.pod_sandbox_status, sandbox)
    netns = sandbox_netns_path(info)
    assert add.netns == netns
    assert pathlib.Path(netns).parent == containerd.netns_dir
    # The sandbox's own process lives in the netns flock plumbed.
    assert os.stat(f"/proc/{info['pid']}/ns/net").st_ino == os.stat(netns).st_ino

    eth0 = addresses(netns, "eth0")
    v4, v6 = (ipaddress.ip_network(cidr) for cidr in POD_CIDRS)
    assert sorted(ipaddress.ip_interface(a).version for a in eth0) == [4, 6], eth0
    assert all(ipaddress.ip_interface(a).ip in (v4 if ipaddress.ip_interface(a).version == 4 else v6) for a in eth0)
    assert {a.split("/")[0] for a in eth0} == set(sandbox_pod_ips(status)), "containerd took flock's result"
    assert addresses(netns, "lo") >= {"198.51.100.30/32", "2001:db8:100::30/128"}
    assert not any(a.startswith(("198.51.100.", "2001:db8:100:")) for a in eth0), "anycast never on eth0"
    veth = host_ifname(sandbox)
    assert veth in host_links(node)

    # StopPodSandbox → DEL with the netns path: the veth, host routes and record go.
    with requests.watch() as stop:
        await asyncio.to_thread(containerd.stop_pod_sandbox, sandbox)
    assert [(e.command, e.netns) for e in stop.execs] == [("DEL", netns)]
    assert stop.execs[0].args["K8S_POD_UID"] == uid
    assert f"pod unplumbed pod=default/web-ctr container={sandbox[:12]}" in node.agent.log()
    assert veth not in host_links(node)
    await eventually(lambda: node.records() == [], within=30, what="the record gone once the pod is unpinned")

    # RemovePodSandbox → DEL again, with an empty CNI_NETNS (containerd removed the netns
    # on stop). It must succeed, or kubelet could never remove the sandbox.
    with requests.watch() as remove:
        await asyncio.to_thread(containerd.remove_pod_sandbox, sandbox)
    assert [(e.command, e.netns) for e in remove.execs] == [("DEL", "")]
    assert remove.execs[0].env["CNI_CONTAINERID"] == sandbox
    assert veth not in host_links(node)
    assert node.records() == []
    assert not any(containerd.netns_dir.iterdir()), "containerd removed the sandbox netns"
    with pytest.raises(Exception) as gone:
        await asyncio.to_thread(containerd.client.pod_sandbox_status, sandbox)
    assert containerd.client.is_not_found(gone.value)
    assert not any(link.startswith("flock") for link in host_links(node))
