"""An emulated Kubernetes API server (kmock) on 127.0.0.1 for real kopf operators.

kmock gaps this module covers (see DESIGN.md): the resources must be declared or kopf
stalls; objects get no uid unless given one; a deletionTimestamp on an object without
finalizers deletes it at once, so pods here carry a test finalizer that stands in for
kubelet's graceful termination (``finish_deletion`` removes it).

The emulator is the lab's (:class:`flock.lab.apiserver.Emulator`): a flat cost per request
and ``fieldSelector`` honoured. It holds no unbounded request history: the tests' fixture
keeps the last :data:`KEPT_REQUESTS` finished requests for :meth:`FakeCluster.agent_requests`.
"""

from __future__ import annotations

import pathlib
import uuid
from typing import Any

import kmock

from flock.lab.apiserver import Emulator

KEPT_REQUESTS = 5000  # finished requests a test can inspect (a short test makes a few hundred)
TEST_FINALIZER = "flock.test/graceful-termination"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def declare_core_resources(api: kmock.KubernetesEmulator) -> None:
    for plural, kind, namespaced in (("namespaces", "Namespace", False), ("nodes", "Node", False),
                                     ("pods", "Pod", True), ("events", "Event", True)):
        api.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})


def write_kubeconfig(path: pathlib.Path, url: str) -> pathlib.Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{url}"}}}}]
users: [{{name: test, user: {{token: test-token}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: test, namespace: default}}}}]
current-context: kmock
""")
    return path


def pod_manifest(name: str, *, node: str, anycast: str = "", namespace: str = "default",
                 ready: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "finalizers": [TEST_FINALIZER],
                     "annotations": {"flock.io/anycast": anycast} if anycast else {}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


class FakeCluster:
    """Test-side handle on the emulator: create, patch and inspect objects over HTTP.

    The test's own requests carry kmock's User-Agent, so the request log can tell them
    from the agent's (kopf's) requests.
    """

    def __init__(self, api: Emulator, server: kmock.Server) -> None:
        self.api = api
        self.server = server
        self.url = str(server.url).rstrip("/")

    async def _call(self, method: str, path: str, body: Any = None,
                    headers: dict[str, str] | None = None) -> Any:
        response = await self.server.client.request(method, path, json=body, headers=headers)
        data = await response.json()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data}")
        return data

    # kmock 0.8 cannot parse a POST to /api/v1/namespaces (an IndexError in its path parser),
    # so cluster-scoped objects are stored directly; they exist before any agent starts.
    def create_namespace(self, name: str) -> None:
        self.api.objects["v1/namespaces", None, name] = {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}

    def create_node(self, name: str, pod_cidrs: list[str] | None = None) -> None:
        self.api.objects["v1/nodes", None, name] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": str(uuid.uuid4())},
            "spec": {"podCIDRs": pod_cidrs or []}}

    async def create_pod(self, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = manifest["metadata"]["namespace"]
        data: dict[str, Any] = await self._call("POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
        return data

    async def patch_pod(self, name: str, patch: dict[str, Any], namespace: str = "default") -> None:
        await self._call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}", patch, MERGE_PATCH)

    async def set_ready(self, name: str, ready: bool, namespace: str = "default") -> None:
        await self.patch_pod(name, {"status": {"conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}}, namespace)

    async def mark_for_deletion(self, name: str, namespace: str = "default") -> None:
        """What the API server does on a graceful DELETE: set deletionTimestamp, keep the pod."""
        await self.patch_pod(name, {"metadata": {"deletionTimestamp": "2026-11-26T00:00:00Z",
                                                 "deletionGracePeriodSeconds": 30}}, namespace)

    async def finish_deletion(self, name: str, namespace: str = "default") -> None:
        """What happens once the kubelet is done: the pod object goes away."""
        await self.patch_pod(name, {"metadata": {"finalizers": []}}, namespace)

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        found = []
        for (resource, _, _), obj in self.api.objects.items():
            if resource.plural == "events" and not obj.deleted:
                raw = obj.raw
                if reason is None or raw.get("reason") == reason:
                    found.append(raw)
        return found

    def agent_requests(self) -> list[kmock.Request]:
        """Every request not made by this test helper (i.e. made by the agent): the last
        KEPT_REQUESTS finished ones, then those still being served (open watches)."""
        requests = [*self.api.served, *self.api]
        return [r for r in requests if not r.headers.get("User-Agent", "").startswith("kmock/")]
