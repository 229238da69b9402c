"""Configuration: typed, validated, unknown keys rejected with the key named."""

from __future__ import annotations

import ipaddress
import pathlib
import re

import pytest

from flock.adapters.configfile import check_host, load_config
from flock.core.settings import parse_config
from flock.errors import ConfigError

BASE = {"nodeName": "node-a", "bird": {"routerId": "192.0.2.1", "asn": 65001}}


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config(BASE, environ={})
    assert config.tick_seconds == 2.0
    assert config.route_protocol == 201
    assert config.pod_cidrs is None  # from the Node
    assert config.bird.socket == pathlib.Path("/run/bird/bird.ctl")
    assert config.anycast_pools == ()
    assert config.max_anycast_per_pod == 32
    assert config.withdrawn_route_protocol == 202 and config.withdrawn_linger_seconds == 2.0
    assert config.last_resort_route_protocol == 203 and config.last_resort_prepend == 3


@pytest.mark.parametrize(("route", "withdrawn"), [(201, 202), (255, 254), (11, 10), (5, 6)])
def test_the_withdrawn_routes_protocol_follows_the_routes_one_and_is_never_birds(route: int, withdrawn: int) -> None:
    assert parse_config({**BASE, "routeProtocol": route}, environ={}).withdrawn_route_protocol == withdrawn


def test_node_name_comes_from_the_environment() -> None:
    config = parse_config({"bird": BASE["bird"]}, environ={"NODE_NAME": "node-b"})
    assert config.node_name == "node-b"


def test_pools_with_namespaces() -> None:
    config = parse_config({**BASE, "anycastPools": [
        {"cidr": "198.51.100.0/24", "namespaces": ["a", "b"]}, {"cidr": "2001:db8:100::/64"}]},
        environ={})
    assert config.anycast_pools[0].namespaces == frozenset({"a", "b"})
    assert config.anycast_pools[1].cidr == ipaddress.ip_network("2001:db8:100::/64")


@pytest.mark.parametrize(("data", "message"), [
    ({**BASE, "tickSecs": 1}, "unknown key(s) tickSecs"),
    ({**BASE, "maxAnycastPerPod": 0}, "maxAnycastPerPod: 0 must be an integer 1-64"),
    ({**BASE, "maxAnycastPerPod": 65}, "maxAnycastPerPod: 65 must be an integer 1-64"),
    ({**BASE, "maxAnycastPerPod": True}, "maxAnycastPerPod"),
    ({**BASE, "anycastPools": [{"cidr": "198.51.100.1/24"}]}, "anycastPools[0].cidr"),
    ({**BASE, "anycastPools": [{"cidr": "banana"}]}, "is not a CIDR"),
    ({**BASE, "bird": {"routerId": "192.0.2.1", "asn": 0}}, "bird.asn"),
    ({**BASE, "bird": {"routerId": "2001:db8::1", "asn": 65001}}, "bird.routerId"),
    ({**BASE, "bird": {"routerId": "192.0.2.1", "asn": 1, "peers": [{"asn": 2}]}}, "bird.peers[0].address"),
    ({**BASE, "routeProtocol": 3}, "routeProtocol"),
    ({**BASE, "routeProtocol": 12}, "routeProtocol: 12 is BIRD's own rtm_protocol"),
    ({**BASE, "withdrawnRouteProtocol": 201}, "withdrawnRouteProtocol: 201 must differ from routeProtocol"),
    ({**BASE, "withdrawnRouteProtocol": 256}, "withdrawnRouteProtocol: 256 must be an integer 5-255"),
    ({**BASE, "withdrawnLingerSeconds": 0.01}, "withdrawnLingerSeconds: 0.01 must be 0.1-60"),
    ({**BASE, "withdrawnLingerSeconds": 61}, "withdrawnLingerSeconds: 61 must be 0.1-60"),
    ({**BASE, "lastResortRouteProtocol": 202}, "lastResortRouteProtocol: 202 must differ"),
    ({**BASE, "lastResortPrepend": 0}, "lastResortPrepend: 0 must be an integer 1-16"),
    ({**BASE, "tickSeconds": 0}, "tickSeconds"),
    ({**BASE, "listen": "9964"}, "listen"),
    ({**BASE, "eligibility": "whenever"}, "eligibility: 'whenever' is not one of"),
    ({"bird": BASE["bird"]}, "nodeName"),
    ({"nodeName": "n"}, "bird: required"),
])
def test_invalid_config_names_the_bad_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, environ={})


def test_unreadable_and_non_yaml_files_are_config_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodeName: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_an_agent_pointed_at_a_missing_procfs_or_netns_refuses_to_start(tmp_path: pathlib.Path) -> None:

    with pytest.raises(ConfigError, match="procPath"):
        check_host(parse_config({**BASE, "procPath": str(tmp_path)}, environ={}))
    with pytest.raises(ConfigError, match="hostNetns"):
        check_host(parse_config({**BASE, "hostNetns": "flk-never-made"}, environ={}))
