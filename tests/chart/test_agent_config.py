"""The config the chart gives flock-agent, and the values it refuses.

The ConfigMap's agent.yaml goes through the DaemonSet's own render-config script (run
here with sh, as the init container runs it) and then through the agent's own loader.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import stat
import subprocess
import sys
import time
from typing import Any

import helm_python
import pytest

from flock.adapters.configfile import load_config
from flock.errors import ConfigError
from tests.chart.rendering import CHART, DUALSTACK, load_values, render, run_render_config
from tests.support.cni import shim

NODE_ENV = {"NODE_NAME": "node-a"}  # what the downward API gives the agent container


def test_default_config_is_accepted_by_the_agent(tmp_path: pathlib.Path) -> None:
    done, path = run_render_config(render(), tmp_path, host_ips="192.0.2.7", host_ip="192.0.2.7")
    assert done.returncode == 0, done.stderr
    config = load_config(path, environ=NODE_ENV)
    assert config.node_name == "node-a"
    assert config.bird.router_id == ipaddress.ip_address("192.0.2.7")
    assert config.bird.asn == 64512 and config.bird.peers == ()
    assert config.anycast_pools == ()
    assert config.pod_cidrs is None  # from the Node's spec.podCIDRs
    assert str(config.bird.config_path) == "/etc/bird/bird.conf"
    assert str(config.bird.socket) == "/run/bird/bird.ctl"
    assert (str(config.state_dir), str(config.cni_socket)) == ("/var/lib/flock", "/run/flock/cni.sock")
    assert (config.route_protocol, config.tick_seconds, config.resync_seconds) == (201, 2.0, 30.0)
    assert (config.withdrawn_route_protocol, config.withdrawn_linger_seconds) == (202, 2.0)
    assert (config.last_resort_route_protocol, config.last_resort_prepend) == (203, 3)
    assert config.max_anycast_per_pod == 32
    assert config.listen == "0.0.0.0:9964"
    assert config.host_netns is None
    assert config.datapath.connection_pinning is True and config.datapath.mark_mask == 0x0FF00000


def test_dualstack_config_is_accepted_by_the_agent(tmp_path: pathlib.Path) -> None:
    # A dual-stack node whose primary address is IPv6: the router id is its IPv4 address.
    done, path = run_render_config(render(load_values(DUALSTACK)), tmp_path,
                                   host_ips="2001:db8:ffff::2,192.0.2.2", host_ip="2001:db8:ffff::2")
    assert done.returncode == 0, done.stderr
    config = load_config(path, environ=NODE_ENV)
    assert config.bird.router_id == ipaddress.ip_address("192.0.2.2")
    assert config.bird.asn == 4200000101  # a 4-byte ASN survives Helm's float64 values
    assert [(str(p.address), p.asn) for p in config.bird.peers] == [
        ("192.0.2.1", 4200000000), ("2001:db8:ffff::1", 4200000000)]
    assert [(str(p.cidr), p.namespaces) for p in config.anycast_pools] == [
        ("198.51.100.0/24", None), ("2001:db8:100::/64", frozenset({"payments", "checkout"}))]
    assert (config.route_protocol, config.tick_seconds, config.resync_seconds) == (202, 0.5, 20.0)
    assert (config.withdrawn_route_protocol, config.withdrawn_linger_seconds) == (210, 0.5)
    assert config.listen == "[::]:9965"
    assert config.bird.timeout_seconds == 5.0
    assert (str(config.state_dir), str(config.cni_socket)) == ("/var/lib/flock-ds", "/run/flock-ds/cni.sock")


def test_fixed_pod_cidrs_and_router_id_are_passed_through(tmp_path: pathlib.Path) -> None:
    rendered = render({"podCIDRs": ["203.0.113.0/26", "2001:db8:200::/64"],
                       "bird": {"routerId": "192.0.2.99"}})
    done, path = run_render_config(rendered, tmp_path, host_ips="192.0.2.7")
    assert done.returncode == 0, done.stderr
    config = load_config(path, environ=NODE_ENV)
    assert config.bird.router_id == ipaddress.ip_address("192.0.2.99")
    assert [str(c) for c in config.pod_cidrs or ()] == ["203.0.113.0/26", "2001:db8:200::/64"]


def test_router_id_from_an_ipv6_only_node_fails_with_a_clear_message(tmp_path: pathlib.Path) -> None:
    done, path = run_render_config(render(), tmp_path, host_ips="2001:db8:ffff::2", host_ip="2001:db8:ffff::2")
    assert done.returncode != 0
    assert "no IPv4 address" in done.stderr and "bird.routerId" in done.stderr
    assert not path.exists()


def test_a_config_the_agent_refuses_stops_render_config_before_the_cni_goes_in(tmp_path: pathlib.Path) -> None:
    # The schema checks shapes; the agent's loader knows more (here: host bits set).
    rendered = render({"anycastPools": [{"cidr": "198.51.100.1/24"}]})
    done, path = run_render_config(rendered, tmp_path, host_ips="192.0.2.7")
    assert done.returncode != 0
    assert "flock-agent: " in done.stderr and "198.51.100.1/24" in done.stderr, done.stderr
    assert not path.exists()
    # install-cni runs after render-config: a refused config never brings flock's conflist.
    order = [c["name"] for c in rendered.pod_spec["initContainers"]]
    assert order.index("render-config") < order.index("install-cni"), order


def test_unsubstituted_config_is_refused_by_the_agent(tmp_path: pathlib.Path) -> None:
    # Guard for the placeholder: if the init step were skipped, the agent must not start.
    path = tmp_path / "agent.yaml"
    path.write_text(render().agent_yaml)
    with pytest.raises(ConfigError, match=r"bird\.routerId"):
        load_config(path, environ=NODE_ENV)


BAD_VALUES = [
    pytest.param({"anycastPools": [{"cidr": "198.51.100.0"}]}, "/anycastPools/0/cidr", id="pool-without-prefix-length"),
    pytest.param({"anycastPools": [{"cidr": "anycast"}]}, "/anycastPools/0/cidr", id="pool-not-a-cidr"),
    pytest.param({"anycastPools": [{"cidr": "198.51.100.0/33"}]}, "/anycastPools/0/cidr", id="pool-v4-prefix-33"),
    pytest.param({"anycastPools": [{"cidr": "2001:db8::/129"}]}, "/anycastPools/0/cidr", id="pool-v6-prefix-129"),
    pytest.param({"anycastPools": [{"namespaces": ["a"]}]}, "cidr", id="pool-without-cidr"),
    pytest.param({"bird": {"asn": 0}}, "/bird/asn", id="asn-zero"),
    pytest.param({"bird": {"asn": 4294967295}}, "/bird/asn", id="asn-reserved"),
    pytest.param({"bird": {"asn": "65000"}}, "/bird/asn", id="asn-string"),
    pytest.param({"bird": {"peers": [{"asn": 65000}]}}, "address", id="peer-without-address"),
    pytest.param({"bird": {"peers": [{"address": "tor-1", "asn": 65000}]}}, "/bird/peers/0/address",
                 id="peer-address-not-ip"),
    pytest.param({"bird": {"peers": [{"address": "192.0.2.1", "asn": 99999999999}]}}, "/bird/peers/0/asn",
                 id="peer-asn-out-of-range"),
    pytest.param({"bird": {"routerId": "2001:db8::1"}}, "/bird/routerId", id="router-id-ipv6"),
    pytest.param({"podCIDRs": ["203.0.113.0/64"]}, "/podCIDRs/0", id="pod-cidr-bad"),
    pytest.param({"routeProtocol": 2}, "/routeProtocol", id="route-protocol-kernel"),
    pytest.param({"withdrawnRouteProtocol": 256}, "/withdrawnRouteProtocol", id="withdrawn-protocol-over-255"),
    pytest.param({"withdrawnLingerSeconds": 0}, "/withdrawnLingerSeconds", id="linger-zero"),
    pytest.param({"lastResortPrepend": 17}, "/lastResortPrepend", id="prepend-over-16"),
    pytest.param({"tickSeconds": 0}, "/tickSeconds", id="tick-zero"),
    pytest.param({"maxAnycastPerPod": 65}, "/maxAnycastPerPod", id="max-anycast-over-64"),
    pytest.param({"listen": "9964"}, "/listen", id="listen-without-host"),
    pytest.param({"datapath": {"connectionPinning": "yes"}}, "/datapath/connectionPinning", id="pinning-not-bool"),
    pytest.param({"datapath": {"markMask": "ff00"}}, "/datapath/markMask", id="mark-mask-not-hex"),
    pytest.param({"datapath": {"pinning": True}}, "pinning", id="datapath-misspelt-key"),
    pytest.param({"anycastPool": []}, "anycastPool", id="misspelt-key"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES)
def test_values_breaking_the_schema_are_rejected_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(values)
    assert field in str(caught.value), str(caught.value)


def test_peer_without_address_is_reported_as_a_missing_property() -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render({"bird": {"peers": [{"address": "192.0.2.1", "asn": 65000}, {"asn": 65000}]}})
    assert "at '/bird/peers/1': missing property 'address'" in str(caught.value)


def test_lint_reports_schema_violations_as_errors() -> None:
    report = helm_python.lint(CHART, {"bird": {"asn": 0}})
    assert any("/bird/asn" in error for error in report["errors"]), report


def test_pinning_values_reach_the_agent(tmp_path: pathlib.Path) -> None:
    values = {"datapath": {"connectionPinning": False, "markMask": 0x00F00000}}
    done, path = run_render_config(render(values), tmp_path, host_ips="192.0.2.7", host_ip="192.0.2.7")
    assert done.returncode == 0, done.stderr
    config = load_config(path, environ=NODE_ENV)
    assert config.datapath.connection_pinning is False and config.datapath.mark_mask == 0x00F00000


def test_good_values_of_every_shape_pass_the_schema() -> None:
    render({"anycastPools": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}, {"cidr": "2001:db8:100::/128",
                                                                        "namespaces": None}],
            "bird": {"asn": 4294967294, "peers": [{"address": "fe80::1", "asn": 1}]},
            "podCIDRs": ["203.0.113.0/24"], "listen": "127.0.0.1:1"})


# --- the other two containers' commands, run for real ---------------------------------


def test_install_cni_writes_the_plugin_and_a_conflist_naming_the_agent_socket(tmp_path: pathlib.Path) -> None:
    values = load_values(DUALSTACK)
    command = render(values).container("install-cni")["command"]
    host = {"/host/cni/bin": tmp_path / "bin", "/host/cni/net.d": tmp_path / "net.d"}
    argv = []
    for arg in command:
        for inside, outside in host.items():
            arg = arg.replace(f"={inside}", f"={outside}")
        argv.append(arg)
    argv[0] = str(pathlib.Path(sys.executable).with_name(argv[0]))
    # flock-cni-install's default source: this checkout's build here, /usr/local/lib/flock in the image.
    shim()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr

    plugin = tmp_path / "bin" / "flock-cni"
    assert plugin.stat().st_mode & stat.S_IXUSR
    assert plugin.read_bytes() == shim().read_bytes()
    assert conflist_versions(tmp_path / "net.d" / values["cni"]["confName"]) == ("1.0.0", ["1.0.0", "1.1.0"])
    conflist = json.loads((tmp_path / "net.d" / values["cni"]["confName"]).read_text())
    assert conflist["plugins"][0]["type"] == "flock"
    # A runtime execs <bin dir>/<type>: flock -> flock-cni, relative, so it holds on the host.
    assert os.readlink(tmp_path / "bin" / "flock") == "flock-cni"
    assert conflist["plugins"][0]["socket"] == values["cniSocket"]


def conflist_versions(path: pathlib.Path) -> tuple[str, list[str]]:
    conflist = json.loads(path.read_text())
    return conflist["cniVersion"], conflist["cniVersions"]


def test_bird_waits_for_the_agent_config_then_execs_bird_in_the_foreground(tmp_path: pathlib.Path) -> None:
    command = render().container("bird")["command"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "bird").write_text('#!/bin/sh\necho "bird $*" > "$(dirname "$0")/../ran"\n')
    (fake_bin / "bird").chmod(0o755)
    config, socket = tmp_path / "bird.conf", tmp_path / "bird.ctl"
    argv = [*command[:4], str(config), str(socket)]
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin"}
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as shell:
        try:
            time.sleep(1.5)
            assert shell.poll() is None, "bird started before the agent wrote its config"
            config.write_text("router id 192.0.2.7;\n")
            assert shell.wait(timeout=10) == 0
        finally:
            if shell.poll() is None:
                shell.kill()
        output = shell.stdout.read() if shell.stdout else ""
    assert "waiting for flock-agent" in output
    assert (tmp_path / "ran").read_text().split() == ["bird", "-f", "-R", "-c", str(config), "-s", str(socket)]
