"""CNI request parsing, results, and IPAM: the pure parts of the CNI plugin."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock.core.cnispec import (
    DECODE_FAILURE,
    DEFAULT_GC_GRACE_SECONDS,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    Interface,
    add_result,
    parse_request,
)
from flock.core.ipam import choose_address, reserved_addresses
from flock.errors import AddressesExhausted, CniError

CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "flock", "type": "flock", "socket": "/run/x.sock"})
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/cni-1",
       "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=api-7;K8S_POD_UID=u1"}


def test_a_runtime_request_parses_with_the_pod_identity() -> None:
    request = parse_request(ENV, CONFIG)
    assert (request.command, request.container_id, request.ifname) == ("ADD", "abc123", "eth0")
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("web", "api-7", "u1")


@pytest.mark.parametrize(("env", "stdin", "code", "words"), [
    (ENV, "{not json", DECODE_FAILURE, "not JSON"),
    (ENV, "[]", INVALID_CONFIG, "JSON object"),
    (ENV, json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "t"}), INCOMPATIBLE_VERSION, "0.4.0"),
    (ENV, json.dumps({"cniVersion": "1.0.0", "type": "t"}), INVALID_CONFIG, "'name'"),
    ({**ENV, "CNI_NETNS": ""}, CONFIG, INVALID_ENV, "CNI_NETNS"),
    ({**ENV, "CNI_COMMAND": "UP"}, CONFIG, INVALID_ENV, "CNI_COMMAND"),
    ({**ENV, "CNI_CONTAINERID": "../x"}, CONFIG, INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_IFNAME": "a-very-long-interface-name"}, CONFIG, INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, CONFIG, INVALID_ENV, "CNI_ARGS"),
    ({**ENV, "CNI_CONTAINERID": "c" * 201}, CONFIG, INVALID_ENV, "over the limit of 200"),
    ({**ENV, "CNI_CONTAINERID": "-abc"}, CONFIG, INVALID_ENV, "starting with a letter or digit"),
    ({**ENV, "CNI_CONTAINERID": "abc\n"}, CONFIG, INVALID_ENV, "CNI_CONTAINERID"),
    ({**ENV, "CNI_CONTAINERID": ""}, CONFIG, INVALID_ENV, "missing"),
    ({**ENV, "CNI_IFNAME": ".."}, CONFIG, INVALID_ENV, "'.' or '..'"),
    ({**ENV, "CNI_IFNAME": "."}, CONFIG, INVALID_ENV, "'.' or '..'"),
    ({**ENV, "CNI_IFNAME": "eth:0"}, CONFIG, INVALID_ENV, "CNI_IFNAME"),
    ({**ENV, "CNI_IFNAME": "eth\t0"}, CONFIG, INVALID_ENV, "whitespace"),
    ({**ENV, "CNI_IFNAME": "ééééééééé"}, CONFIG, INVALID_ENV, "15 bytes"),  # 9 characters, 18 bytes
    ({**ENV, "CNI_IFNAME": ""}, CONFIG, INVALID_ENV, "missing"),
    (ENV, CONFIG[:-1] + ', "pad": "' + "x" * (1 << 20) + '"}', INVALID_CONFIG, "over 1048576 bytes"),
    (ENV, "[" * 100_000 + "]" * 100_000, DECODE_FAILURE, "not JSON"),
])
def test_bad_requests_get_the_specs_error_code(env: dict[str, str], stdin: str, code: int, words: str) -> None:
    with pytest.raises(CniError) as caught:
        parse_request(env, stdin)
    assert caught.value.code == code
    assert words in caught.value.msg


@pytest.mark.parametrize(("container_id", "ifname"), [
    ("c" * 200, "a" * 15),
    ("0.a_b-C", "eth0.100"),
    ("abc", "net1"),
])
def test_ids_and_names_at_the_specs_limits_are_accepted(container_id: str, ifname: str) -> None:
    request = parse_request({**ENV, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname}, CONFIG)
    assert (request.container_id, request.ifname) == (container_id, ifname)


def gc_config(**extra: object) -> str:
    return json.dumps({"cniVersion": "1.1.0", "name": "flock", "type": "flock", **extra})


def test_gc_and_status_name_no_container_and_need_spec_1_1() -> None:
    for command in ("GC", "STATUS"):
        bare = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", "CNI_CONTAINERID": "", "CNI_IFNAME": ""}
        config = gc_config(**{"cni.dev/valid-attachments": []})
        assert parse_request(bare, config).command == command
        with pytest.raises(CniError) as old:
            parse_request(bare, config.replace("1.1.0", "1.0.0"))
        assert old.value.code == INCOMPATIBLE_VERSION and command in old.value.msg


def test_gc_reads_the_valid_attachments_and_the_grace() -> None:
    env = {"CNI_COMMAND": "GC"}
    listed = [{"containerID": "abc", "ifname": "eth0"}, {"containerID": "def"}]
    request = parse_request(env, gc_config(**{"cni.dev/valid-attachments": listed}))
    assert [(a.container_id, a.ifname) for a in request.valid_attachments] == [("abc", "eth0"), ("def", "")]
    assert request.gc_grace_seconds == DEFAULT_GC_GRACE_SECONDS
    # The name a draft of the spec used, which libcni sends too.
    assert parse_request(env, gc_config(**{"cni.dev/attachments": listed[:1]})).valid_attachments[0].ifname == "eth0"
    assert parse_request(env, gc_config(**{"cni.dev/valid-attachments": [], "gcGraceSeconds": 0})
                         ).gc_grace_seconds == 0


@pytest.mark.parametrize("extra", [
    {},  # no list: GC cannot tell what is stale, so it releases nothing
    {"cni.dev/valid-attachments": None},
    {"cni.dev/valid-attachments": {"containerID": "abc"}},
    {"cni.dev/valid-attachments": [{"containerID": "abc"}, {"ifname": "eth0"}]},
    {"cni.dev/valid-attachments": [{"containerID": ""}]},
    {"cni.dev/valid-attachments": [{"containerID": "abc", "ifname": 1}]},
    {"cni.dev/valid-attachments": [], "gcGraceSeconds": -1},
    {"cni.dev/valid-attachments": [], "gcGraceSeconds": "60"},
    {"cni.dev/valid-attachments": [], "gcGraceSeconds": True},
    {"cni.dev/valid-attachments": [], "gcGraceSeconds": 1e9},
])
def test_a_gc_whose_list_or_grace_cannot_be_read_is_refused(extra: dict[str, object]) -> None:
    with pytest.raises(CniError) as refused:
        parse_request({"CNI_COMMAND": "GC"}, gc_config(**extra))
    assert refused.value.code == INVALID_CONFIG


def test_del_needs_no_netns() -> None:
    assert parse_request({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, CONFIG).netns == ""


def test_add_result_is_spec_shaped() -> None:
    ips = (ipaddress.ip_address("203.0.113.5"), ipaddress.ip_address("2001:db8:200::5"))
    result = add_result(cni_version="1.0.0", host=Interface("flock1a2b3c4d", "aa:bb:cc:dd:ee:01"),
                        pod=Interface("eth0", "aa:bb:cc:dd:ee:02", "/var/run/netns/cni-1"), pod_ips=ips,
                        gateways={4: ipaddress.ip_address("169.254.1.1"), 6: ipaddress.ip_address("fe80::1")})
    assert result["interfaces"][1] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-1"}
    assert result["ips"] == [
        {"address": "203.0.113.5/32", "gateway": "169.254.1.1", "interface": 1},
        {"address": "2001:db8:200::5/128", "gateway": "fe80::1", "interface": 1},
    ]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}]


NET4 = ipaddress.ip_network("203.0.113.0/29")


def test_network_first_host_and_broadcast_are_never_handed_out() -> None:
    assert reserved_addresses(NET4) == {ipaddress.ip_address(a) for a in
                                        ("203.0.113.0", "203.0.113.1", "203.0.113.7")}
    given: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _ in range(5):
        given.append(choose_address(NET4, given, given[-1] if given else None))
    assert [str(a) for a in given] == [f"203.0.113.{i}" for i in range(2, 7)]
    with pytest.raises(AddressesExhausted, match=re.escape("203.0.113.0/29")):
        choose_address(NET4, given, given[-1])


def test_addresses_are_handed_out_round_robin_not_reused_at_once() -> None:
    first = choose_address(NET4, set())
    second = choose_address(NET4, {first}, first)
    # first is freed, but the next pick moves on rather than reusing it.
    assert choose_address(NET4, {second}, second) not in (first, second)


def test_a_v6_64_is_cheap() -> None:
    net = ipaddress.ip_network("2001:db8:200::/64")
    assert str(choose_address(net, set())) == "2001:db8:200::2"


@given(st.sets(st.integers(min_value=0, max_value=7)), st.integers(min_value=0, max_value=7))
def test_a_chosen_address_is_free_and_usable(taken: set[int], after: int) -> None:
    used = {NET4.network_address + i for i in taken}
    try:
        chosen = choose_address(NET4, used, NET4.network_address + after)
    except AddressesExhausted:
        assert set(NET4) - reserved_addresses(NET4) <= used
        return
    assert chosen in NET4 and chosen not in used and chosen not in reserved_addresses(NET4)
