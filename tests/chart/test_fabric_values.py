"""The chart's fabric values: BGP passwords from Secrets, BFD, per-node peers, multihop,
communities. The password never reaches the ConfigMap: the kubelet mounts the Secret into
the agent container, whose config names the file; RBAC stays as it is.
"""

from __future__ import annotations

import pathlib
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from flock.adapters.configfile import load_config, read_passwords
from flock.core.fabric import BfdSettings, Community, LabelSelector
from tests.chart.rendering import Rendered, render, run_render_config

PASSWORD_DIR = "/etc/flock-bgp-passwords"
FABRIC: dict[str, Any] = {
    "anycastPools": [{"cidr": "198.51.100.0/24", "communities": ["65000:59", "65000:1:2"]}],
    "podCIDRCommunities": ["65000:200"],
    "bird": {
        "asn": 65101,
        "bfd": {"intervalMs": 200},
        "peers": [
            {"address": "192.0.2.1", "asn": 65000, "passwordSecret": {"name": "tor-bgp", "key": "password"}},
            {"address": "2001:db8:ffff::1", "asn": 65000, "passwordSecret": {"name": "tor-bgp", "key": "password-v6"},
             "bfd": {"multiplier": 5}},
            {"address": "203.0.113.250", "asn": 65500, "multihop": 4, "sourceAddress": "fromNodeIP", "port": 1179,
             "nodeSelector": {"matchLabels": {"rack": "r1"},
                              "matchExpressions": [{"key": "spare", "operator": "DoesNotExist"}]},
             "bfd": {"enabled": False}},
        ],
    },
}


def passwords_volume(rendered: Rendered) -> dict[str, Any]:
    volumes = [v for v in rendered.pod_spec["volumes"] if v["name"] == "bgp-passwords"]
    assert len(volumes) == 1, rendered.pod_spec["volumes"]
    volume: dict[str, Any] = volumes[0]
    return volume


def mounts(rendered: Rendered, container: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in rendered.container(container).get("volumeMounts", [])}


def test_a_peers_password_secret_is_mounted_into_the_agent_and_named_by_path_in_the_config() -> None:
    rendered = render(FABRIC)
    volume = passwords_volume(rendered)
    assert volume["projected"]["defaultMode"] == 0o400
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "tor-bgp", "items": [{"key": "password", "path": "peer-0"}]}},
        {"secret": {"name": "tor-bgp", "items": [{"key": "password-v6", "path": "peer-1"}]}},
    ]
    assert mounts(rendered, "agent")["bgp-passwords"] == {
        "name": "bgp-passwords", "mountPath": PASSWORD_DIR, "readOnly": True}
    for other in ("bird", "render-config", "install-cni"):
        assert "bgp-passwords" not in mounts(rendered, other), other

    peers = yaml.safe_load(rendered.agent_yaml)["bird"]["peers"]
    assert [p.get("passwordFile") for p in peers] == [f"{PASSWORD_DIR}/peer-0", f"{PASSWORD_DIR}/peer-1", None]
    assert "passwordSecret" not in rendered.agent_yaml and "tor-bgp" not in rendered.agent_yaml


def test_no_password_secret_no_volume() -> None:
    rendered = render({"bird": {"peers": [{"address": "192.0.2.1", "asn": 65000}]}})
    assert "bgp-passwords" not in {v["name"] for v in rendered.pod_spec["volumes"]}
    assert "bgp-passwords" not in mounts(rendered, "agent")


def test_the_agent_reads_the_fabric_config_and_the_mounted_password(tmp_path: pathlib.Path) -> None:
    rendered = render(FABRIC)
    done, path = run_render_config(rendered, tmp_path, host_ips="192.0.2.2")
    assert done.returncode == 0, done.stderr  # --check-config: the Secret is not mounted there
    # The kubelet's side: the Secret's keys as files under the mount path (here under tmp_path).
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "peer-0").write_text("v4-password\n")
    (secret_dir / "peer-1").write_text("v6-password")
    path.write_text(path.read_text().replace(PASSWORD_DIR, str(secret_dir)))
    config = read_passwords(load_config(path, environ={"NODE_NAME": "node-a"}))

    tor_v4, tor_v6, route_server = config.bird.peers
    assert (tor_v4.password, tor_v6.password, route_server.password) == ("v4-password", "v6-password", None)
    assert (tor_v4.bfd, tor_v6.bfd) == (BfdSettings(True, 200, 3), BfdSettings(True, 200, 5))
    assert route_server.bfd.enabled is False
    assert (route_server.multihop, route_server.source_address, route_server.port) == (4, "fromNodeIP", 1179)
    assert isinstance(route_server.node_selector, LabelSelector)
    assert str(route_server.node_selector) == "rack=r1,!spare"
    # "65000:59" survives Helm's YAML and the agent's (YAML 1.1 would read it unquoted as 3900059).
    assert config.anycast_pools[0].communities == (Community((65000, 59)), Community((65000, 1, 2)))
    assert config.pod_cidr_communities == (Community((65000, 200)),)


def capabilities(rendered: Rendered) -> set[str]:
    return set(rendered.container("bird")["securityContext"]["capabilities"]["add"])


def test_bird_gets_the_bfd_capability_only_while_a_peer_runs_bfd() -> None:
    peer = {"address": "192.0.2.1", "asn": 65000}
    assert capabilities(render()) == {"NET_BIND_SERVICE"}  # no peers
    assert capabilities(render({"bird": {"peers": [peer]}})) == {"NET_BIND_SERVICE", "NET_RAW"}
    off = {"enabled": False}
    assert capabilities(render({"bird": {"peers": [peer], "bfd": off}})) == {"NET_BIND_SERVICE"}
    assert capabilities(render({"bird": {"peers": [{**peer, "bfd": off}]}})) == {"NET_BIND_SERVICE"}
    assert capabilities(render({"bird": {"peers": [{**peer, "bfd": {"enabled": True}}], "bfd": off}})) == {
        "NET_BIND_SERVICE", "NET_RAW"}
    assert capabilities(render({"bird": {"peers": [peer]}, "birdDaemon": {"bfdCapability": "NET_ADMIN"}})) == {
        "NET_BIND_SERVICE", "NET_ADMIN"}


def test_fabric_values_leave_rbac_as_it_is() -> None:
    # The kubelet mounts the Secrets; the agent reads only its own Node (as before).
    for kind in ("ClusterRole", "ClusterRoleBinding", "ServiceAccount"):
        assert render(FABRIC).one(kind) == render().one(kind), kind
    rules = render(FABRIC).one("ClusterRole")["rules"]
    assert not any("secrets" in rule.get("resources", []) for rule in rules)


@pytest.mark.parametrize("version", ["1.29.0", "1.35.0"])
def test_fabric_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    for manifest in render(FABRIC).manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_a_config_change_of_the_fabric_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        value: str = render(values).one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(FABRIC) != checksum({**FABRIC, "podCIDRCommunities": ["65000:201"]})


PEER = {"address": "192.0.2.1", "asn": 65000}
BAD_VALUES = [
    pytest.param({"podCIDRCommunities": ["65000"]}, "/podCIDRCommunities/0", id="community-one-part"),
    pytest.param({"podCIDRCommunities": [65000]}, "/podCIDRCommunities/0", id="community-not-a-string"),
    pytest.param({"anycastPools": [{"cidr": "198.51.100.0/24", "communities": ["a:b"]}]},
                 "/anycastPools/0/communities/0", id="pool-community-words"),
    pytest.param({"bird": {"bfd": {"intervalMs": 5}}}, "/bird/bfd/intervalMs", id="bfd-interval-too-short"),
    pytest.param({"bird": {"bfd": {"multiplier": 1}}}, "/bird/bfd/multiplier", id="bfd-multiplier-1"),
    pytest.param({"bird": {"bfd": {"interval": 300}}}, "/bird/bfd", id="bfd-misspelt"),
    pytest.param({"bird": {"peers": [{**PEER, "passwordSecret": {"name": "tor-bgp"}}]}},
                 "/bird/peers/0/passwordSecret", id="secret-without-key"),
    pytest.param({"bird": {"peers": [{**PEER, "passwordFile": "/etc/pw"}]}}, "/bird/peers/0",
                 id="password-file-is-the-charts-to-set"),
    pytest.param({"bird": {"peers": [{**PEER, "password": "plain"}]}}, "/bird/peers/0", id="no-plain-password"),
    pytest.param({"bird": {"peers": [{**PEER, "multihop": 0}]}}, "/bird/peers/0/multihop", id="multihop-zero"),
    pytest.param({"bird": {"peers": [{**PEER, "port": 70000}]}}, "/bird/peers/0/port", id="port-too-high"),
    pytest.param({"bird": {"peers": [{**PEER, "sourceAddress": "node"}]}}, "/bird/peers/0/sourceAddress",
                 id="source-address-word"),
    pytest.param({"bird": {"peers": [{**PEER, "nodeSelector": {"matchExpressions": [
        {"key": "rack", "operator": "Gt", "values": ["1"]}]}}]}}, "/bird/peers/0/nodeSelector", id="selector-gt"),
    pytest.param({"bird": {"peers": [{**PEER, "nodeSelector": {"matchLabels": {"rack": 1}}}]}},
                 "/bird/peers/0/nodeSelector/matchLabels/rack", id="selector-label-not-a-string"),
    pytest.param({"birdDaemon": {"bfdCapability": "SYS_ADMIN"}}, "/birdDaemon/bfdCapability", id="bfd-capability"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES)
def test_bad_fabric_values_are_rejected_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    assert field in str(caught.value), str(caught.value)


def test_a_multihop_peer_with_bfd_and_no_source_address_stops_render_config(tmp_path: pathlib.Path) -> None:
    # The schema cannot see it; the agent's loader (run by render-config) does.
    rendered = render({"bird": {"peers": [{**PEER, "multihop": 2}]}})
    done, path = run_render_config(rendered, tmp_path, host_ips="192.0.2.2")
    assert done.returncode != 0 and "BFD on a multihop session needs sourceAddress" in done.stderr, done.stderr
    assert not path.exists()
