"""A kubelet emulator for the lab: pods' lives in the order a real kubelet leads them.

Start: create the Pod in the API, create its netns, exec the node's ``flock-cni`` ADD
(the real plugin, through the real agent), start the pod's HTTP server, probe it on the
pod's own IP from the node (as kubelet's readiness probe does), mark the Pod Ready.

Terminate (kubelet's order): the API marks the pod for deletion (``deletionTimestamp``;
the pod is still Ready); the preStop grace passes with the server still serving; the
server gets SIGTERM (it stops accepting, finishes what is in flight and closes its
long-lived connections cleanly: ``flock.lab.podserver``) and exits; only after kubelet's
detection delay (its pod lifecycle relist) is the pod marked not Ready; ``flock-cni`` DEL;
the netns goes; the Pod object goes.

kmock deletes an object without finalizers at once, so lab pods carry a finalizer that
stands in for graceful deletion; the emulator removes it at the very end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import json
import logging
import socket
import subprocess
import time
import uuid
from typing import Any

import aiohttp

from flock.adapters.plumbing import in_netns
from flock.core.annotation import parse_anycast
from flock.lab.topology import Fabric, Node, python, stop_process, wait_for

logger = logging.getLogger(__name__)

FINALIZER = "lab.flock.io/graceful-deletion"
MERGE = {"Content-Type": "application/merge-patch+json"}


@dataclasses.dataclass
class LabPod:
    name: str
    uid: str
    node: Node
    netns: str
    container_id: str
    ips: list[str] = dataclasses.field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    marked_for_deletion: float = 0.0  # time.monotonic() of the deletionTimestamp patch
    ready_at: float | None = None  # time.monotonic() when the Ready patch was sent
    server_stopped: float | None = None  # time.monotonic() when its server was told to stop
    server_exited: float | None = None  # time.monotonic() when its server had exited
    not_ready_sent: float | None = None  # time.monotonic() when the NotReady patch was sent
    network_removed: float | None = None  # time.monotonic() when CNI DEL was called

    @property
    def ipv4(self) -> str:
        return next(ip for ip in self.ips if ":" not in ip)

    @property
    def ipv6(self) -> str:
        return next(ip for ip in self.ips if ":" in ip)


class Kubelet:
    def __init__(self, fabric: Fabric, session: aiohttp.ClientSession, anycast: str, *,
                 grace: float, detection: float) -> None:
        self.fabric = fabric
        self.session = session
        self.anycast = anycast
        self.grace = grace
        self.detection = detection

    async def _api(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        async with self.session.request(method, self.fabric.api_url + path, json=body, headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def _patch(self, pod: LabPod, patch: dict[str, Any]) -> None:
        await self._api("PATCH", f"/api/v1/namespaces/default/pods/{pod.name}", patch, MERGE)

    async def _cni(self, pod: LabPod, command: str) -> dict[str, Any]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": f"/run/netns/{pod.netns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(pod.node.cni_bin.parent),
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.name};"
                           f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}"}
        process = await asyncio.create_subprocess_exec(
            str(pod.node.cni_bin), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await process.communicate(json.dumps(pod.node.cni_config).encode())
        result: dict[str, Any] = json.loads(out) if out.strip() else {}
        if process.returncode != 0:
            raise RuntimeError(f"flock-cni {command} for {pod.name} failed: {result}")
        return result

    async def start_pod(self, name: str, node: Node, annotations: dict[str, str] | None = None) -> LabPod:
        """Start a pod; ``annotations``: besides flock.io/anycast (e.g. flock.io/anycast-terminating)."""
        pod = LabPod(name, str(uuid.uuid4()), node, self.fabric.names.pod(name), uuid.uuid4().hex)
        await self._api("POST", "/api/v1/namespaces/default/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": pod.uid, "finalizers": [FINALIZER],
                         "labels": {"app": "web"},
                         "annotations": {"flock.io/anycast": self.anycast, **(annotations or {})}},
            "spec": {"nodeName": node.spec.name, "containers": [{"name": "web", "image": "flock-lab/web"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        })
        await asyncio.to_thread(self.fabric.state.add_netns, pod.netns)
        result = await self._cni(pod, "ADD")
        pod.ips = [ip["address"].split("/")[0] for ip in result["ips"]]
        pod.server = await asyncio.to_thread(
            self.fabric.state.spawn,
            [python(), "-m", "flock.lab.podserver", "--name", name,
             *[f"--listen={address}" for address in [*map(str, parse_anycast(self.anycast).addresses), *pod.ips]]],
            self.fabric.run_dir / "pods" / f"{name}.log", pod.netns)
        await self._until_answers(pod)
        pod.ready_at = time.monotonic()
        await self._patch(pod, {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        logger.info("pod %s ready on %s ips=%s", name, node.spec.name, ",".join(pod.ips))
        return pod

    async def _until_answers(self, pod: LabPod) -> None:
        """kubelet's readiness probe: an HTTP GET to the pod's own IP, from the node."""
        # One thread in the node's netns probes until the server answers (or 20 s pass).
        await in_netns(f"/run/netns/{pod.node.spec.netns}", 30, wait_for, functools.partial(_probe, pod.ipv4),
                       20, f"pod {pod.name}'s server to answer on {pod.ipv4}")

    async def terminate_pod(self, pod: LabPod) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        pod.marked_for_deletion = time.monotonic()
        await self._patch(pod, {"metadata": {"deletionTimestamp": now, "deletionGracePeriodSeconds": 30}})
        await asyncio.sleep(self.grace)  # preStop: still serving
        if pod.server is not None:
            pod.server_stopped = time.monotonic()
            await asyncio.to_thread(stop_process, pod.server)
            pod.server_exited = time.monotonic()
            self.fabric.state.forget(pod.server)
        await asyncio.sleep(self.detection)  # kubelet notices the container is gone
        pod.not_ready_sent = time.monotonic()
        await self._patch(pod, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        pod.network_removed = time.monotonic()
        await self._cni(pod, "DEL")
        await asyncio.to_thread(self.fabric.state.remove_netns, pod.netns)
        await self._patch(pod, {"metadata": {"finalizers": []}})  # the Pod object goes
        logger.info("pod %s gone", pod.name)

    async def events(self) -> list[dict[str, Any]]:
        data = await self._api("GET", "/api/v1/events")
        return list(data.get("items") or [])


def _probe(address: str) -> bool:
    try:
        with socket.create_connection((address, 80), timeout=0.5) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(64).startswith(b"HTTP/1.0 200")
    except OSError:
        return False
