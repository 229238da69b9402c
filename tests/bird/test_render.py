"""Rendering bird.conf: golden files per scenario, and what may never reach the config.

Golden files live in tests/bird/golden/<scenario>/bird.conf; a diff in review shows
exactly what the fabric will see. Regenerate them after an intended template change:

    FLOCK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/bird/test_render.py

(tests/bird/test_bird_control.py checks every golden file with `bird -p`.)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from flock.adapters.bird import render_bird_conf
from flock.core.birdview import BirdView, bird_view, protocol_name
from flock.core.model import IPAddress, IPNetwork
from flock.core.settings import AgentConfig, parse_config
from flock.errors import BirdConfigRejected

GOLDEN = pathlib.Path(__file__).parent / "golden"
UPDATE = os.environ.get("FLOCK_UPDATE_GOLDEN") == "1"


def agent_config(pools: Sequence[dict[str, Any]] = (), peers: Sequence[dict[str, Any]] = (),
                 bird_bfd: dict[str, Any] | None = None, **top: Any) -> AgentConfig:
    bird: dict[str, Any] = {"routerId": "192.0.2.2", "asn": 65101, "peers": list(peers)}
    if bird_bfd is not None:
        bird["bfd"] = bird_bfd
    return parse_config({"nodeName": "node-a", "anycastPools": list(pools), "bird": bird, **top}, environ={})


def with_passwords(config: AgentConfig, passwords: Mapping[str, str]) -> AgentConfig:
    """``config`` as flock.adapters.configfile.read_passwords leaves it (by peer address)."""
    peers = tuple(dataclasses.replace(p, password=passwords[str(p.address)]) if str(p.address) in passwords else p
                  for p in config.bird.peers)
    return dataclasses.replace(config, bird=dataclasses.replace(config.bird, peers=peers))


GOLDEN_PASSWORD = "golden test password: not a secret \\ #;{}'$"
"""Every character class BIRD takes inside its double quotes (no escapes in BIRD 2.0.12)."""


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
    # BFD: the defaults changed under bird.bfd, one peer with its own multiplier, one without BFD.
    "bfd": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/24"}],
            peers=[{"address": "192.0.2.1", "asn": 65000},
                   {"address": "192.0.2.5", "asn": 65001, "bfd": {"multiplier": 5}},
                   {"address": "192.0.2.9", "asn": 65009, "bfd": {"enabled": False}}],
            bird_bfd={"intervalMs": 200},
        ),
        pod_cidrs=networks("203.0.113.0/26"),
    ),
    # TCP-MD5 passwords on both sessions of a dual-stack ToR, as read from their files.
    "password": bird_view(
        config=with_passwords(agent_config(
            pools=[{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
            peers=[{"address": "192.0.2.1", "asn": 65000, "passwordFile": "/etc/flock-bgp-passwords/peer-0"},
                   {"address": "2001:db8:ffff::1", "asn": 65000, "passwordFile": "/etc/flock-bgp-passwords/peer-1"}],
        ), {"192.0.2.1": GOLDEN_PASSWORD, "2001:db8:ffff::1": "another-one"}),
        pod_cidrs=networks("203.0.113.0/26", "2001:db8:200::/64"),
    ),
    # Multihop eBGP to route servers: a TTL, a source address (fixed, or the Node's InternalIP
    # of the peer's family), a port; BFD on them is multihop BFD.
    "multihop": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}],
            peers=[{"address": "203.0.113.250", "asn": 65500, "multihop": 4, "sourceAddress": "192.0.2.2",
                    "port": 1179},
                   {"address": "2001:db8:fffe::250", "asn": 65500, "multihop": True, "sourceAddress": "fromNodeIP"},
                   {"address": "192.0.2.1", "asn": 65000}],
        ),
        pod_cidrs=networks("203.0.113.0/26"),
        node_addresses=addresses("192.0.2.2", "2001:db8:ffff::2"),
    ),
    # Communities: per pool (two pools, one in each family, one with none) and on the pod CIDRs.
    "communities": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/25", "communities": ["65000:100", "65000:1:2"]},
                   {"cidr": "198.51.100.128/25"},
                   {"cidr": "2001:db8:100::/64", "communities": ["65000:106"]}],
            peers=[{"address": "192.0.2.1", "asn": 65000}, {"address": "2001:db8:ffff::1", "asn": 65000}],
            podCIDRCommunities=["65000:200", "4200000000:0:1"],
        ),
        pod_cidrs=networks("203.0.113.0/26", "2001:db8:200::/64"),
    ),
    # Peers per node: this node (rack-a) has the ToR of its rack and the spine-facing peer
    # every node has; the other racks' peers are absent.
    "node_selected": bird_view(
        config=agent_config(
            pools=[{"cidr": "198.51.100.0/24"}],
            peers=[{"address": "192.0.2.1", "asn": 65001, "nodeSelector": {"matchLabels": {"rack": "rack-a"}}},
                   {"address": "192.0.2.1", "asn": 65002, "nodeSelector": {"matchLabels": {"rack": "rack-b"}}},
                   {"address": "192.0.2.9", "asn": 65009,
                    "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["rack-a"]}]}},
                   {"address": "192.0.2.5", "asn": 65000}],
        ),
        pod_cidrs=networks("203.0.113.0/26"),
        node_labels={"rack": "rack-a", "kubernetes.io/hostname": "node-a"},
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
    template.write_text("{% for p in peers %}{{ p.local_pref }}{% endfor %}\n")
    with pytest.raises(BirdConfigRejected, match="local_pref"):
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


# ---------------------------------------------------------------------------
# Fabric: peers per node, passwords, source addresses
# ---------------------------------------------------------------------------


def test_a_peer_whose_selector_does_not_match_the_node_is_absent_from_its_bird_conf() -> None:
    text = render_bird_conf(SCENARIOS["node_selected"])
    assert "neighbor 192.0.2.1 as 65001;" in text and "neighbor 192.0.2.5 as 65000;" in text
    assert "65002" not in text, "rack-b's router"
    assert "192.0.2.9" not in text, "NotIn rack-a"
    assert "# this node matches the peer's nodeSelector: rack=rack-a" in text
    # The same config on a rack-b node: its own router at the same address, and 192.0.2.9.
    config = agent_config(peers=[
        {"address": "192.0.2.1", "asn": 65001, "nodeSelector": {"matchLabels": {"rack": "rack-a"}}},
        {"address": "192.0.2.1", "asn": 65002, "nodeSelector": {"matchLabels": {"rack": "rack-b"}}},
        {"address": "192.0.2.9", "asn": 65009,
         "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["rack-a"]}]}}])
    rack_b = render_bird_conf(bird_view(config=config, pod_cidrs=[], node_labels={"rack": "rack-b"}))
    assert "neighbor 192.0.2.1 as 65002;" in rack_b and "neighbor 192.0.2.9 as 65009;" in rack_b
    assert "65001" not in rack_b
    # A node without a rack label: NotIn matches it (as in Kubernetes), matchLabels does not.
    unlabelled = render_bird_conf(bird_view(config=config, pod_cidrs=[]))
    assert re.findall(r"^\tneighbor (.*);$", unlabelled, flags=re.MULTILINE) == ["192.0.2.9 as 65009"]


def test_two_peers_for_one_address_on_one_node_are_refused() -> None:
    config = agent_config(peers=[
        {"address": "192.0.2.1", "asn": 65001, "nodeSelector": {"matchLabels": {"rack": "a"}}},
        {"address": "192.0.2.1", "asn": 65002,
         "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Exists"}]}}])
    with pytest.raises(BirdConfigRejected, match=r"two peers with address 192\.0\.2\.1 select this node"):
        bird_view(config=config, pod_cidrs=[], node_labels={"rack": "a"})


def test_from_node_ip_takes_the_nodes_address_of_the_peers_family() -> None:
    config = agent_config(peers=[{"address": "2001:db8:ffff::1", "asn": 65000, "multihop": 2,
                                  "sourceAddress": "fromNodeIP"}])
    view = bird_view(config=config, pod_cidrs=[], node_addresses=addresses("192.0.2.2", "2001:db8:ffff::2"))
    assert view.peers[0].source_address == "2001:db8:ffff::2"
    with pytest.raises(BirdConfigRejected, match=r"the Node has no IPv6 InternalIP in status\.addresses"):
        bird_view(config=config, pod_cidrs=[], node_addresses=addresses("192.0.2.2"))


def test_a_password_is_rendered_into_bird_conf_only() -> None:
    view = SCENARIOS["password"]
    assert f'password "{GOLDEN_PASSWORD}";' in render_bird_conf(view)
    assert GOLDEN_PASSWORD not in repr(view) and "another-one" not in repr(view)


def test_a_password_file_that_was_not_read_renders_nothing() -> None:
    config = agent_config(peers=[{"address": "192.0.2.1", "asn": 65000, "passwordFile": "/run/pw"}])
    with pytest.raises(BirdConfigRejected, match="the password of /run/pw was not read"):
        bird_view(config=config, pod_cidrs=[])


def test_a_prefix_in_nested_pools_gets_the_communities_of_both() -> None:
    config = agent_config(pools=[{"cidr": "198.51.100.0/24", "communities": ["65000:1"]},
                                 {"cidr": "198.51.100.0/28", "namespaces": ["web"], "communities": ["65000:2"]},
                                 {"cidr": "198.51.100.0/28", "communities": ["65000:3"]}])
    view = bird_view(config=config, pod_cidrs=[])
    assert [(p.pool, p.communities.standard) for p in view.pool_communities_v4] == [
        ("198.51.100.0/24", ("(65000, 1)",)), ("198.51.100.0/28", ("(65000, 2)", "(65000, 3)"))]
    assert view.pool_communities_v6 == () and not view.pod_cidr_communities
