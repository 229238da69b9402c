"""The Helm chart rendered by Helm's own template engine (helm-python-sdk, no helm binary)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
from typing import Any

import helm_python
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "flock"
DUALSTACK = pathlib.Path(__file__).with_name("values-dualstack.yaml")


def load_values(path: pathlib.Path) -> dict[str, Any]:
    # Helm's own YAML reading (YAML 1.1 quirks included), not PyYAML's.
    return helm_python.values_from_yaml(path.read_text())


@dataclasses.dataclass
class Rendered:
    """One `helm template`: each template's output, and the manifests in them."""

    files: dict[str, str]

    @property
    def manifests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for name, text in sorted(self.files.items()):
            if name.endswith(".yaml"):
                found.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return found

    def one(self, kind: str) -> dict[str, Any]:
        matches = [m for m in self.manifests if m["kind"] == kind]
        assert len(matches) == 1, f"expected one {kind}, rendered {len(matches)}"
        return matches[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("DaemonSet")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        for container in self.pod_spec["containers"] + self.pod_spec.get("initContainers", []):
            if container["name"] == name:
                return dict(container)
        raise AssertionError(f"no container {name!r} in the DaemonSet")

    @property
    def agent_yaml(self) -> str:
        text: str = self.one("ConfigMap")["data"]["agent.yaml"]
        return text

    def host_path(self, volume: str) -> str:
        for item in self.pod_spec["volumes"]:
            if item["name"] == volume:
                path: str = item["hostPath"]["path"]
                return path
        raise AssertionError(f"no volume {volume!r}")


def render(values: dict[str, Any] | None = None, *, release: str = "flock",
           namespace: str = "kube-system") -> Rendered:
    """Render the chart as `helm install` would (values checked against values.schema.json).

    Raises helm_python.HelmValuesError for values the schema rejects.
    """
    with helm_python.Chart.load(CHART) as chart:
        return Rendered(chart.render(values, name=release, namespace=namespace, is_install=True))


def run_render_config(rendered: Rendered, workdir: pathlib.Path, *, host_ips: str, host_ip: str = "",
                      node: str = "node-a") -> tuple[subprocess.CompletedProcess[str], pathlib.Path]:
    """Run the DaemonSet's render-config init container command as the kubelet would.

    The container's two path arguments (the ConfigMap's agent.yaml, the rendered config)
    are pointed into ``workdir``; the script itself is the rendered one. Returns the
    process and the path of the config it wrote.
    """
    command = rendered.container("render-config")["command"]
    assert command[:2] == ["sh", "-ec"] and len(command) == 6, command
    source, target = workdir / "configmap-agent.yaml", workdir / "agent.yaml"
    source.write_text(rendered.agent_yaml)
    # flock-agent on PATH, as in the image.
    path = f"{pathlib.Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env = {"PATH": path, "NODE_NAME": node,
           "HOST_IPS": host_ips, "HOST_IP": host_ip}
    done = subprocess.run([*command[:4], str(source), str(target)], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    return done, target
