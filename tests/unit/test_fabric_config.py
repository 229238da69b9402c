"""Fabric settings: BFD, TCP-MD5 passwords, per-node peers, multihop, communities.

Parsed once at start-up (flock.core.settings, flock.core.fabric); the password files are
read by flock.adapters.configfile.read_passwords. A password never appears in an error
message, a repr or a log line.
"""

from __future__ import annotations

import ipaddress
import pathlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock.adapters.configfile import read_passwords
from flock.core.birdview import peers_for_node
from flock.core.fabric import (
    BfdSettings,
    Community,
    LabelSelector,
    Requirement,
    parse_community,
    parse_label_selector,
    password_problem,
)
from flock.core.settings import AgentConfig, parse_config
from flock.errors import ConfigError

TOR = {"address": "192.0.2.1", "asn": 65000}


def config(*peers: dict[str, Any], bfd: dict[str, Any] | None = None, **top: Any) -> AgentConfig:
    bird: dict[str, Any] = {"routerId": "192.0.2.2", "asn": 65101, "peers": list(peers)}
    if bfd is not None:
        bird["bfd"] = bfd
    return parse_config({"nodeName": "node-a", "bird": bird, **top}, environ={})


# --- BFD ---------------------------------------------------------------------------------


def test_bfd_is_on_by_default_at_300_ms_times_3() -> None:
    peer = config(TOR).bird.peers[0]
    assert peer.bfd == BfdSettings(enabled=True, interval_ms=300, multiplier=3)
    assert peer.bfd.detection_ms == 900


def test_a_peer_overrides_some_keys_of_the_bfd_defaults_and_keeps_the_others() -> None:
    peers = config(TOR, {"address": "192.0.2.5", "asn": 65000, "bfd": {"multiplier": 5}},
                   {"address": "192.0.2.9", "asn": 65000, "bfd": {"enabled": False}},
                   bfd={"intervalMs": 100}).bird.peers
    assert [p.bfd for p in peers] == [BfdSettings(True, 100, 3), BfdSettings(True, 100, 5), BfdSettings(False, 100, 3)]


@pytest.mark.parametrize(("bfd", "message"), [
    ({"intervalMs": 5}, "bird.bfd.intervalMs: 5 must be an integer 10-60000"),
    ({"intervalMs": 300.5}, "bird.bfd.intervalMs"),
    ({"multiplier": 1}, "bird.bfd.multiplier: 1 must be an integer 2-255"),
    ({"enabled": "yes"}, "bird.bfd.enabled: 'yes' must be true or false"),
    ({"interval": 300}, "bird.bfd: unknown key(s) interval"),
])
def test_bad_bfd_settings_are_refused_naming_the_key(bfd: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(TOR, bfd=bfd)


# --- multihop, sourceAddress, port -----------------------------------------------------------


def test_multihop_source_address_and_port() -> None:
    peers = config({**TOR, "multihop": True, "sourceAddress": "192.0.2.2", "port": 1179},
                   {"address": "2001:db8:ffff::1", "asn": 65000, "multihop": 3, "sourceAddress": "fromNodeIP"},
                   {"address": "192.0.2.5", "asn": 65000, "multihop": False}).bird.peers
    assert (peers[0].multihop, peers[0].source_address, peers[0].port) == (64, ipaddress.ip_address("192.0.2.2"), 1179)
    assert (peers[1].multihop, peers[1].source_address, peers[1].port) == (3, "fromNodeIP", 179)
    assert (peers[2].multihop, peers[2].source_address) == (None, None)


@pytest.mark.parametrize(("peer", "message"), [
    ({**TOR, "multihop": 0}, "bird.peers[0].multihop: 0 must be true, false or a TTL 1-255"),
    ({**TOR, "multihop": "2"}, "bird.peers[0].multihop"),
    ({**TOR, "port": 0}, "bird.peers[0].port: 0 must be a TCP port 1-65535"),
    ({**TOR, "port": True}, "bird.peers[0].port"),
    ({**TOR, "sourceAddress": "node"}, "bird.peers[0].sourceAddress: 'node' is not an IP address"),
    ({**TOR, "sourceAddress": "2001:db8::2"}, "are of different families"),
    # BIRD refuses it ("Multihop BGP with BFD requires specified local address"): say so at start-up.
    ({**TOR, "multihop": 2}, "BFD on a multihop session needs sourceAddress"),
    ({**TOR, "password": "x"}, "bird.peers[0]: unknown key(s) password"),
])
def test_bad_peer_settings_are_refused_naming_the_key(peer: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        config(peer)


def test_a_multihop_peer_without_source_address_is_fine_without_bfd() -> None:
    assert config({**TOR, "multihop": 2, "bfd": {"enabled": False}}).bird.peers[0].multihop == 2


def test_one_address_twice_needs_a_node_selector_on_both_entries() -> None:
    rack_a = {**TOR, "nodeSelector": {"matchLabels": {"rack": "a"}}}
    rack_b = {"address": "192.0.2.1", "asn": 65002, "nodeSelector": {"matchLabels": {"rack": "b"}}}
    assert len(config(rack_a, rack_b).bird.peers) == 2  # each rack's router behind the same address
    with pytest.raises(ConfigError, match=r"bird.peers\[1\]: 192.0.2.1 is bird.peers\[0\] too"):
        config(rack_a, TOR)


# --- node selectors ----------------------------------------------------------------------------


def test_a_peer_whose_selector_does_not_match_the_node_is_not_this_nodes() -> None:
    peers = config(TOR, {"address": "192.0.2.5", "asn": 65000, "nodeSelector": {"matchLabels": {"rack": "a"}}},
                   {"address": "192.0.2.9", "asn": 65000, "nodeSelector": {"matchLabels": {"rack": "b"}}}).bird.peers
    assert [str(p.address) for p in peers_for_node(peers, {"rack": "a"})] == ["192.0.2.1", "192.0.2.5"]
    assert [str(p.address) for p in peers_for_node(peers, {})] == ["192.0.2.1"]


SELECTOR = {"matchLabels": {"rack": "a"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2", "z1"]},
                                 {"key": "role", "operator": "NotIn", "values": ["spare"]},
                                 {"key": "bgp", "operator": "Exists"},
                                 {"key": "drain", "operator": "DoesNotExist"}]}


@pytest.mark.parametrize(("labels", "matches"), [
    ({"rack": "a", "zone": "z1", "bgp": ""}, True),
    ({"rack": "a", "zone": "z2", "bgp": "yes", "role": "worker"}, True),
    ({"rack": "b", "zone": "z1", "bgp": ""}, False),  # matchLabels
    ({"rack": "a", "zone": "z3", "bgp": ""}, False),  # In
    ({"rack": "a", "bgp": ""}, False),  # In: a node without the label does not match
    ({"rack": "a", "zone": "z1", "bgp": "", "role": "spare"}, False),  # NotIn
    ({"rack": "a", "zone": "z1"}, False),  # Exists
    ({"rack": "a", "zone": "z1", "bgp": "", "drain": "true"}, False),  # DoesNotExist
])
def test_selectors_match_as_kubernetes_label_selectors_do(labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(SELECTOR, "s").matches(labels) is matches


def test_a_selector_prints_in_kubectls_syntax() -> None:
    assert str(parse_label_selector(SELECTOR, "s")) == "rack=a,zone in (z1,z2),role notin (spare),bgp,!drain"
    assert str(LabelSelector()) == "(every node)"
    assert LabelSelector().matches({}) and LabelSelector().matches({"any": "thing"})


@given(st.dictionaries(st.sampled_from("abc"), st.sampled_from("xyz")),
       st.lists(st.sampled_from("xyz"), min_size=1), st.sampled_from("abc"))
def test_in_and_notin_are_complements(labels: dict[str, str], values: list[str], key: str) -> None:
    inside = Requirement(key, "In", tuple(sorted(set(values)))).matches(labels)
    outside = Requirement(key, "NotIn", tuple(sorted(set(values)))).matches(labels)
    assert inside != outside


@pytest.mark.parametrize(("selector", "message"), [
    ({"matchLabels": {"rack": 1}}, r"nodeSelector.matchLabels.rack: label value 1 must be a string \(quote it\)"),
    ({"matchLabels": {"rack": True}}, "must be a string"),
    ({"matchExpressions": [{"key": "rack", "operator": "In"}]}, "In needs at least one value"),
    ({"matchExpressions": [{"key": "rack", "operator": "Exists", "values": ["a"]}]}, "Exists takes no values"),
    ({"matchExpressions": [{"key": "rack", "operator": "Gt", "values": ["1"]}]}, "'Gt' is not one of"),
    ({"matchExpressions": [{"operator": "Exists"}]}, r"matchExpressions\[0\].key"),
    ({"matchLabel": {"rack": "a"}}, "unknown key"),
    (["rack=a"], "expected a mapping"),
])
def test_bad_selectors_are_refused_naming_the_key(selector: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"bird.peers\[0\].nodeSelector") as caught:
        config({**TOR, "nodeSelector": selector})
    assert caught.match(message)


# --- communities -----------------------------------------------------------------------------


def test_communities_of_pools_and_pod_cidrs() -> None:
    pool = {"cidr": "198.51.100.0/24", "communities": ["65000:100", "65000:1:2", "65000:100"]}
    parsed = config(TOR, anycastPools=[pool], podCIDRCommunities=["4200000000:7:8", "0:0", "65535:65535"])
    assert parsed.anycast_pools[0].communities == (Community((65000, 100)), Community((65000, 1, 2)))
    assert [str(c) for c in parsed.pod_cidr_communities] == ["0:0", "65535:65535", "4200000000:7:8"]
    assert [c.bird() for c in parsed.pod_cidr_communities] == ["(0, 0)", "(65535, 65535)", "(4200000000, 7, 8)"]


@pytest.mark.parametrize(("value", "message"), [
    ("65536:1", "a standard community's parts are 0-65535"),
    ("1:4294967296:0", "a large community's parts are 0-4294967295"),
    ("65000", "is not a community"),
    ("65000:1:2:3", "is not a community"),
    ("65000:-1", "is not a community"),
    ("no-export", "is not a community"),
    (3900059, "must be a quoted string"),  # YAML 1.1's reading of an unquoted 65000:59
])
def test_bad_communities_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_community(value, "podCIDRCommunities[0]")
    with pytest.raises(ConfigError, match=r"anycastPools\[0\].communities\[0\]"):
        config(TOR, anycastPools=[{"cidr": "198.51.100.0/24", "communities": [value]}])


# --- passwords ---------------------------------------------------------------------------------

SECRET = "s3cr3t with spaces\\#;{}'$"


def with_password_file(tmp_path: pathlib.Path, content: bytes | None) -> AgentConfig:
    path = tmp_path / "password"
    if content is not None:
        path.write_bytes(content)
    return config({**TOR, "passwordFile": str(path)}, {"address": "192.0.2.5", "asn": 65000})


def test_the_password_is_read_at_start_up_with_one_trailing_newline_dropped(tmp_path: pathlib.Path) -> None:
    parsed = with_password_file(tmp_path, SECRET.encode() + b"\n")
    assert parsed.bird.peers[0].password is None  # parsing reads no file
    peers = read_passwords(parsed).bird.peers
    assert peers[0].password == SECRET and peers[1].password is None
    assert read_passwords(with_password_file(tmp_path, b"pw \n")).bird.peers[0].password == "pw "


def test_a_password_is_in_no_repr(tmp_path: pathlib.Path) -> None:
    loaded = read_passwords(with_password_file(tmp_path, SECRET.encode()))
    assert SECRET not in repr(loaded) and SECRET not in str(loaded.bird.peers)


@pytest.mark.parametrize(("content", "problem"), [
    (None, "cannot read it: No such file or directory"),
    (b"", "the password is empty"),
    (b"\n", "the password is empty"),
    (b"two-newlines\n\n", "control character"),  # only one newline is dropped
    (b'quote"inside', "double quote"),
    (b"tab\tinside", "control character"),
    (b"crlf-ending\r\n", "control character"),
    ("pässwörd-x".encode(), "non-ASCII"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"x" * 81, "the password is 81 bytes; TCP-MD5 keys are at most 80"),
])
def test_a_password_bird_cannot_take_stops_the_agent_naming_the_key_not_the_password(
        tmp_path: pathlib.Path, content: bytes | None, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_passwords(with_password_file(tmp_path, content))
    message = str(caught.value)
    assert message.startswith(f"bird.peers[0].passwordFile: {tmp_path / 'password'}"), message
    assert problem in message and "192.0.2.1" in message
    if content and len(content.strip()) > 4:
        assert content.decode(errors="replace").strip() not in message


def test_an_unreadable_password_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    parsed = with_password_file(tmp_path, b"pw")
    directory = tmp_path / "password"
    directory.unlink()
    directory.mkdir()  # a directory: unreadable as a file even for root
    with pytest.raises(ConfigError, match=r"passwordFile: .* \(peer 192\.0\.2\.1\): cannot read it: Is a directory"):
        read_passwords(parsed)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=80))
def test_printable_ascii_without_a_double_quote_is_always_accepted(password: str) -> None:
    assert (password_problem(password) is None) is ('"' not in password)
