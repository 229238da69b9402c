"""CNI request parsing, results, and IPAM: the pure parts of the CNI plugin."""

from __future__ import annotations

import io
import ipaddress
import json
import pathlib
import re
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock.cni import plugin
from flock.core.cnispec import (
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    MAX_NETWORK_CONFIG_BYTES,
    Interface,
    add_result,
    parse_request,
)
from flock.core.ipam import choose_address, reserved_addresses
from flock.errors import AddressesExhausted, CniError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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


def test_the_plugin_and_the_agent_share_the_network_config_limit() -> None:
    assert plugin.MAX_NETWORK_CONFIG_BYTES == MAX_NETWORK_CONFIG_BYTES
    assert 6 * MAX_NETWORK_CONFIG_BYTES + 64 * 1024 < plugin.MAX_FRAME, "escaped stdin fits a frame"


def test_the_plugin_refuses_a_network_config_over_the_limit_without_asking_the_agent(tmp_path: pathlib.Path) -> None:
    code, out = plugin.run(dict(ENV), None)  # None: read_stdin found more than the limit
    error = json.loads(out)
    assert code == 1 and error["code"] == INVALID_CONFIG and "over" in error["msg"]


def test_the_plugin_reads_stdin_bounded() -> None:
    class Endless(io.RawIOBase):
        asked = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: WriteableBuffer) -> int:
            view = memoryview(buffer)
            self.asked += len(view)
            view[:] = b"x" * len(view)
            return len(view)

    stream = Endless()
    assert plugin.read_stdin(io.BufferedReader(stream)) is None
    assert stream.asked < 2 * plugin.MAX_NETWORK_CONFIG_BYTES
    assert plugin.read_stdin(io.BytesIO(b"{}")) == b"{}"


def test_the_plugin_answers_bad_utf8_with_a_decode_error() -> None:
    code, out = plugin.run(dict(ENV), b'{"cniVersion": "1.0.0", "name": "\xff"}')
    assert code == 1 and json.loads(out)["code"] == DECODE_FAILURE


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


def test_the_plugin_answers_version_without_the_agent() -> None:
    code, out = plugin.run({"CNI_COMMAND": "VERSION"}, "")
    assert code == 0 and json.loads(out)["supportedVersions"] == ["1.0.0"]


def test_the_plugin_reports_try_again_later_when_the_agent_is_absent(tmp_path: pathlib.Path) -> None:
    config = json.dumps({"cniVersion": "1.0.0", "name": "flock", "type": "flock",
                         "socket": str(tmp_path / "nobody.sock")})
    code, out = plugin.run(dict(ENV), config)
    error = json.loads(out)
    assert code == 1 and error["code"] == 11 and "nobody.sock" in error["msg"]


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
