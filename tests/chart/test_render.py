"""The chart renders with Helm's engine, lints clean, and every manifest is valid Kubernetes."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart.rendering import CHART, DUALSTACK, load_values, render

# The chart's minimum (Chart.yaml kubeVersion) and a recent release; kubernetes-validate
# ships both schema sets offline.
KUBERNETES_VERSIONS = ["1.29.0", "1.35.0"]

SCENARIOS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "dualstack": load_values(DUALSTACK),
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "privileged": {"agent": {"privileged": True}},
}


def _kinds(values: dict[str, Any] | None) -> list[str]:
    return sorted(m["kind"] for m in render(values).manifests)


@pytest.mark.parametrize("scenario", ["default", "dualstack"])
def test_chart_lints_without_errors_or_warnings(scenario: str) -> None:
    report = helm_python.lint(CHART, SCENARIOS[scenario], namespace="kube-system")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["errors"] == [] and problems == [], report


def test_chart_renders_the_daemonset_and_what_it_needs() -> None:
    assert _kinds(None) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
    assert _kinds(SCENARIOS["servicemonitor"]) == [
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Service", "ServiceAccount",
        "ServiceMonitor"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_validates_against_the_kubernetes_schemas(scenario: str, version: str) -> None:
    checked = 0
    for manifest in render(SCENARIOS[scenario]).manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD of prometheus-operator: Kubernetes ships no schema for it
        # strict: unknown fields are errors too (a misspelt key would be dropped silently).
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 5


def test_servicemonitor_scrapes_the_metrics_port_of_the_headless_service() -> None:
    rendered = render(SCENARIOS["servicemonitor"])
    service, monitor = rendered.one("Service"), rendered.one("ServiceMonitor")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == rendered.one("DaemonSet")["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_daemonset_runs_on_every_node_one_node_at_a_time() -> None:
    rendered = render()
    daemonset = rendered.one("DaemonSet")
    spec = rendered.pod_spec
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert spec["serviceAccountName"] == rendered.one("ServiceAccount")["metadata"]["name"]
    assert [c["name"] for c in spec["initContainers"]] == ["render-config", "install-cni"]
    assert [c["name"] for c in spec["containers"]] == ["agent", "bird"]


def _capabilities(container: dict[str, Any]) -> tuple[list[str], set[str]]:
    context = container["securityContext"]
    assert context.get("privileged") is not True
    assert context["allowPrivilegeEscalation"] is False
    return context["capabilities"]["drop"], set(context["capabilities"].get("add", []))


def test_containers_get_only_the_capabilities_they_need() -> None:
    rendered = render()
    assert _capabilities(rendered.container("agent")) == (["ALL"], {"NET_ADMIN", "SYS_ADMIN"})
    assert _capabilities(rendered.container("bird")) == (["ALL"], {"NET_BIND_SERVICE"})
    assert _capabilities(rendered.container("install-cni")) == (["ALL"], set())
    assert _capabilities(rendered.container("render-config")) == (["ALL"], set())


def test_agent_privileged_is_an_explicit_opt_in() -> None:
    # The workaround for the agent's sysctl writes on a read-only /proc/sys (values.yaml).
    rendered = render(SCENARIOS["privileged"])
    assert rendered.container("agent")["securityContext"] == {"privileged": True, "readOnlyRootFilesystem": True}
    assert _capabilities(rendered.container("bird")) == (["ALL"], {"NET_BIND_SERVICE"})
    # A privileged container's own /proc/sys is writable: no hostPath into the host's procfs.
    assert yaml.safe_load(rendered.agent_yaml)["procPath"] == "/proc"
    assert not any(v.get("hostPath", {}).get("path", "").startswith("/proc") for v in rendered.pod_spec["volumes"])
    assert not any(m["mountPath"].startswith("/host/proc") for m in rendered.container("agent")["volumeMounts"])


@pytest.mark.parametrize("scenario", ["default", "dualstack"])
def test_agent_container_runs_flock_agent_with_node_name_probes_and_host_mounts(scenario: str) -> None:
    values = SCENARIOS[scenario] or {}
    rendered = render(values)
    agent = rendered.container("agent")
    assert agent["command"][:2] == ["flock-agent", "--config=/etc/flock/agent.yaml"]
    assert ("--verbose" in agent["command"]) is bool(values.get("agent", {}).get("verbose"))
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent["env"]

    port = int(values.get("listen", "0.0.0.0:9964").rsplit(":", 1)[1])
    assert agent["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe"):  # alive while passes run, API server or not
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    state_dir = values.get("stateDir", "/var/lib/flock")
    socket_dir = values.get("cniSocket", "/run/flock/cni.sock").rsplit("/", 1)[0]
    # Host paths are mounted at the same path: the CNI plugin on the host and the agent
    # in its container name the socket (and the pods' netns pins) identically.
    assert mounts["state"]["mountPath"] == rendered.host_path("state") == state_dir
    assert mounts["cni-socket"]["mountPath"] == rendered.host_path("cni-socket") == socket_dir
    assert mounts["netns"]["mountPath"] == rendered.host_path("netns") == "/var/run/netns"
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    # Of the host's procfs only the net sysctls, writable, where procPath points.
    assert rendered.host_path("host-proc-sys-net") == "/proc/sys/net"
    assert mounts["host-proc-sys-net"] == {"name": "host-proc-sys-net", "mountPath": "/host/proc/sys/net"}
    assert yaml.safe_load(rendered.agent_yaml)["procPath"] == "/host/proc"
    host_paths = [v["hostPath"]["path"] for v in rendered.pod_spec["volumes"] if "hostPath" in v]
    assert not any(p == "/proc" or (p.startswith("/proc/") and p != "/proc/sys/net") for p in host_paths)


@pytest.mark.parametrize("scenario", ["default", "dualstack"])
def test_install_cni_touches_only_the_hosts_cni_directories(scenario: str) -> None:
    # flock-cni is a static executable: nothing of the host is needed for it (no
    # interpreter to check), and the init container mounts the two CNI folders only.
    values = SCENARIOS[scenario] or {}
    rendered = render(values)
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("install-cni")["volumeMounts"]}
    assert mounts == {"cni-bin": "/host/cni/bin", "cni-conf": "/host/cni/net.d"}
    cni = {"binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d", **values.get("cni", {})}
    assert rendered.host_path("cni-bin") == cni["binDir"] and rendered.host_path("cni-conf") == cni["confDir"]


def test_bird_container_shares_config_and_socket_with_the_agent() -> None:
    rendered = render()
    agent = {m["name"]: m for m in rendered.container("agent")["volumeMounts"]}
    bird = {m["name"]: m for m in rendered.container("bird")["volumeMounts"]}
    for volume, path in (("bird-config", "/etc/bird"), ("bird-socket", "/run/bird")):
        assert agent[volume]["mountPath"] == bird[volume]["mountPath"] == path
    assert bird["bird-config"]["readOnly"] is True  # only the agent writes bird.conf
    command = rendered.container("bird")["command"]
    assert command[-2:] == ["/etc/bird/bird.conf", "/run/bird/bird.ctl"]
    assert 'exec bird -f -R -c "$1" -s "$2"' in command[2]
    assert rendered.container("bird")["lifecycle"]["preStop"]["exec"]["command"] == [
        "birdc", "-s", "/run/bird/bird.ctl", "graceful", "restart"]


def test_image_tag_defaults_to_the_chart_app_version() -> None:
    with helm_python.Chart.load(CHART) as chart:
        app_version = chart.metadata["appVersion"]
    assert render().container("agent")["image"] == f"flock:{app_version}"
    assert render(SCENARIOS["dualstack"]).container("bird")["image"] == "registry.example/flock:0.1.0-test"


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        annotations = render(values).one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert checksum(None) == checksum(None)
    assert checksum(None) != checksum({"tickSeconds": 3})


def test_notes_tell_how_to_annotate_and_watch_events() -> None:
    notes = render().files["flock/templates/NOTES.txt"]
    assert "flock.io/anycast:" in notes
    assert "kubectl get events" in notes
    assert "bird.peers is empty" in notes
    assert "bird.peers is empty" not in render(SCENARIOS["dualstack"]).files["flock/templates/NOTES.txt"]
