"""Rendering bird.conf: golden files per scenario, and what may never reach the config.

Golden files live in tests/bird/golden/<scenario>/bird.conf; a diff in review shows
exactly what the fabric will see. Regenerate them after an intended template change:

    FLOCK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/bird/test_render.py

(tests/bird/test_bird_control.py checks every golden file with `bird -p`.)
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import pytest

from flock.adapters.bird import render_bird_conf
from flock.core.birdview import BirdView, bird_view, protocol_name
from flock.core.model import IPAddress, IPNetwork
from flock.core.settings import AgentConfig, parse_config
from flock.errors import BirdConfigRejected

GOLDEN = pathlib.Path(__file__).parent / "golden"
UPDATE = os.environ.get("FLOCK_UPDATE_GOLDEN") == "1"


def agent_config(pools: Sequence[dict[str, Any]] = (),
                 peers: Sequence[dict[str, Any]] = ()) -> AgentConfig:
    return parse_config({
        "nodeName": "node-a",
        "anycastPools": list(pools),
        "bird": {"routerId": "192.0.2.2", "asn": 65101, "peers": list(peers)},
    }, environ={})


def addresses(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


def networks(*texts: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(t) for t in texts]


SCENARIOS: dict[str, BirdView] = {
    # Nothing configured beyond the required keys.
    "minimal": bird_view(config=agent_config(), pod_cidrs=[]),
    # A dual-stack node: one IPv4 and one IPv6 session to its ToR, anycast pools in both
    # families, one pod CIDR per family.
    "dual_stack_two_peers": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
            peers=[{"address": "2001:db8:ffff::1", "asn": 65000},
                   {"address": "192.0.2.1", "asn": 65000}],
        ),
        pod_cidrs=networks("2001:db8:200::/64", "203.0.113.0/26"),
    ),
    # Small pools, one limited to a namespace (which only the resolver enforces).
    "restricted_pools": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/28", "namespaces": ["web"]},
                   {"cidr": "198.51.100.128/25"},
                   {"cidr": "2001:db8:100:1::/64"}],
            peers=[{"address": "192.0.2.1", "asn": 65000},
                   {"address": "192.0.2.5", "asn": 65001}],
        ),
        pod_cidrs=networks("203.0.113.64/26"),
    ),
}


def kernel_protocols(text: str) -> list[str]:
    return re.findall(r"^\s*protocol\s+kernel\b", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendering_matches_the_golden_file(scenario: str) -> None:
    golden = GOLDEN / scenario / "bird.conf"
    text = render_bird_conf(SCENARIOS[scenario])
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}: run with FLOCK_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{golden} differs from the rendering; if intended, regenerate with FLOCK_UPDATE_GOLDEN=1")


def test_every_golden_directory_has_a_scenario() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(SCENARIOS)


# ---------------------------------------------------------------------------
# What the config may contain
# ---------------------------------------------------------------------------


def test_no_anycast_prefix_is_ever_in_the_config_bird_learns_them_from_the_kernel() -> None:
    for view in SCENARIOS.values():
        text = render_bird_conf(view)
        assert not re.search(r"/(32|128)\b", text), "no host prefix: pods never change bird.conf"


def test_the_kernel_protocols_learn_only_flocks_host_routes_in_the_pools_and_write_nothing() -> None:
    config = agent_config(pools=[{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}])
    text = render_bird_conf(bird_view(config=config, pod_cidrs=[]))
    assert len(kernel_protocols(text)) == 2
    assert text.count("export none;") == 2, "BIRD must never write into the node's kernel table"
    assert text.count("\tlearn;") == 2
    # advertised and last-resort routes only, not withdrawn ones (202)
    assert "if krt_source != 201 && krt_source != 203 then reject;" in text
    assert "if net.len != 32 then reject;" in text and "if net.len != 128 then reject;" in text


def test_the_routes_protocols_follow_the_config() -> None:
    config = parse_config({"nodeName": "node-a", "routeProtocol": 90, "withdrawnRouteProtocol": 91,
                           "lastResortRouteProtocol": 95, "lastResortPrepend": 2,
                           "bird": {"routerId": "192.0.2.2", "asn": 65101}}, environ={})
    text = render_bird_conf(bird_view(config=config, pod_cidrs=[]))
    assert "if krt_source != 90 && krt_source != 95 then reject;" in text and "rtm_protocol 91" in text
    assert text.count("if krt_source = 95 then {") == 2
    assert text.count("bgp_path.prepend(65101);") == 2 * 2


def test_the_config_depends_only_on_the_view_not_on_the_input_order() -> None:
    config = agent_config(pools=[{"cidr": "2001:db8:100::/64"}, {"cidr": "198.51.100.0/24"}],
                          peers=[{"address": "192.0.2.5", "asn": 65001}, {"address": "192.0.2.1", "asn": 65000}])
    cidrs = networks("2001:db8:200::/64", "203.0.113.0/26")
    view = bird_view(config=config, pod_cidrs=cidrs)
    again = bird_view(config=config, pod_cidrs=list(reversed(cidrs)) + cidrs)
    assert again == view
    assert render_bird_conf(again) == render_bird_conf(view)
    assert view.pools_v4 == ("198.51.100.0/24",) and view.pools_v6 == ("2001:db8:100::/64",)


def test_peer_protocol_names_come_from_their_addresses() -> None:
    assert protocol_name(ipaddress.ip_address("192.0.2.2")) == "flock_peer_192_0_2_2"
    assert protocol_name(ipaddress.ip_address("2001:db8:ffff::1")) == "flock_peer_2001_db8_ffff__1"
    peers = SCENARIOS["dual_stack_two_peers"].peers
    assert [(p.name, p.family, p.export_filter) for p in peers] == [
        ("flock_peer_192_0_2_1", "ipv4", "flock_export_v4"),
        ("flock_peer_2001_db8_ffff__1", "ipv6", "flock_export_v6"),
    ]


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------


def test_a_template_naming_a_missing_field_is_rejected(tmp_path: pathlib.Path) -> None:
    template = tmp_path / "bird.conf.j2"
    template.write_text("router id {{ router_id }};\n# {{ no_such_field }}\n")
    with pytest.raises(BirdConfigRejected, match="no_such_field"):
        render_bird_conf(SCENARIOS["minimal"], template)


def test_a_missing_peer_attribute_is_rejected_too(tmp_path: pathlib.Path) -> None:
    template = tmp_path / "bird.conf.j2"
    template.write_text("{% for p in peers %}{{ p.password }}{% endfor %}\n")
    with pytest.raises(BirdConfigRejected, match="password"):
        render_bird_conf(SCENARIOS["dual_stack_two_peers"], template)


def test_a_user_template_can_include_flocks_own_parts(tmp_path: pathlib.Path) -> None:
    template = tmp_path / "custom.j2"
    template.write_text('# site header\nrouter id {{ router_id }};\n{% include "_filters.j2" %}\n')
    text = render_bird_conf(SCENARIOS["minimal"], template)
    assert text.startswith("# site header\nrouter id 192.0.2.2;\n")
    assert "filter flock_export_v6" in text


def test_a_missing_template_is_rejected(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BirdConfigRejected, match=r"nope\.j2"):
        render_bird_conf(SCENARIOS["minimal"], tmp_path / "nope.j2")
