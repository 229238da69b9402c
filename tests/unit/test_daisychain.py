"""Daisy chaining's ring and plan (flock.core.daisychain), and its settings."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flock.core.daisychain import (
    LAST_STOP_LINK,
    TABLE_BASE,
    DaisyChainConfig,
    Member,
    chain_mac,
    plan_chain,
    ring_members,
    watched,
)
from flock.core.pinning import DEFAULT_MARK_MASK, chain_mark, slot_count, slot_of_mark
from flock.core.settings import parse_config
from flock.errors import ConfigError

POOLS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64")]


def node(name: str, *addresses: str, ready: str | None = "True") -> dict[str, Any]:
    status: dict[str, Any] = {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]
                              + [{"type": "Hostname", "address": name}]}
    if ready is not None:
        status["conditions"] = [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]
    return {"metadata": {"name": name}, "status": status}


def members(*names: str) -> list[Member]:
    return [Member(name, ipaddress.ip_address(f"192.0.2.{10 + i}")) for i, name in enumerate(names)]


def test_the_ring_is_the_ready_nodes_with_an_internal_ip_by_name() -> None:
    ring = ring_members([
        node("node-c", "192.0.2.12", "2001:db8::c"),
        node("node-a", "2001:db8::a", "192.0.2.10"),
        node("node-b", "192.0.2.11", ready=None),  # no conditions yet: counts
        node("node-d", "192.0.2.13", ready="False"),
        node("node-e", "192.0.2.14", ready="Unknown"),  # the node controller lost it
        node("node-f"),  # no InternalIP
        node("node-g", "not an address"),
    ])
    assert ring == [Member("node-a", ipaddress.ip_address("192.0.2.10")),
                    Member("node-b", ipaddress.ip_address("192.0.2.11")),
                    Member("node-c", ipaddress.ip_address("192.0.2.12"))]


def test_an_ipv6_only_cluster_rings_over_ipv6_and_a_mixed_one_over_the_majority() -> None:
    assert [m.address.version for m in ring_members([node("a", "2001:db8::a"), node("b", "2001:db8::b")])] == [6, 6]
    mixed = ring_members([node("a", "192.0.2.1", "2001:db8::a"), node("b", "192.0.2.2"), node("c", "2001:db8::c")])
    assert [(m.name, str(m.address)) for m in mixed] == [("a", "192.0.2.1"), ("b", "192.0.2.2")]


def test_two_nodes_one_hop_and_the_last_stop_back() -> None:
    plan = plan_chain(members("node-a", "node-b"), "node-a", DaisyChainConfig(), POOLS)
    assert plan.size == 2 and plan.hops == 1
    assert [(link.name, link.vni, str(link.remote)) for link in plan.links] == [
        ("flkdc1", 0xF10C01, "192.0.2.11"), (LAST_STOP_LINK, 0xF10C00, "192.0.2.11")]
    assert [str(r) for r in plan.rules] == [
        f"ip -4 rule pref 1001 fwmark CHAIN iif flkdc1 lookup {TABLE_BASE}",
        f"ip -4 rule pref 1002 fwmark CHAIN lookup {TABLE_BASE + 1}",
        f"ip -6 rule pref 1001 fwmark CHAIN iif flkdc1 lookup {TABLE_BASE}",
        f"ip -6 rule pref 1002 fwmark CHAIN lookup {TABLE_BASE + 1}"]
    assert {str(r) for r in plan.routes} == {
        "198.51.100.0/24 via 169.254.0.1 dev flkdc1 onlink table 1100001",
        "2001:db8:100::/64 via fe80::1 dev flkdc1 onlink table 1100001",
        "198.51.100.0/24 via 169.254.0.1 dev flkdcl onlink table 1100000",
        "2001:db8:100::/64 via fe80::1 dev flkdcl onlink table 1100000"}
    assert plan.peers == (ipaddress.ip_address("192.0.2.11"),)
    assert plan.describe() == "2 nodes, next 192.0.2.11, up to 1 hop(s)"


def test_a_packet_visits_every_node_once_then_returns_to_its_origin() -> None:
    """Follow a packet nobody owns from each node: hop by hop along the links and rules the
    plans hold, it must visit every other node exactly once, then land where it started."""
    ring = members("a", "b", "c", "d", "e")
    by_address = {m.address: m.name for m in ring}
    plans = {m.name: plan_chain(ring, m.name, DaisyChainConfig(), POOLS) for m in ring}
    for origin in by_address.values():
        at, table, visited = origin, TABLE_BASE + 1, []
        for _ in range(10):
            link = next(r.link for r in plans[at].routes if r.table == table and r.dst.version == 4)
            remote = next(c.remote for c in plans[at].links if c.name == link)
            at = by_address[remote]
            if link == LAST_STOP_LINK:
                break
            visited.append(at)
            table = next(r.table for r in plans[at].rules if r.iif == link and r.version == 4)
        assert at == origin and sorted(visited) == sorted(set(by_address.values()) - {origin}), (origin, visited)


def test_max_hops_bounds_the_ring_and_the_last_stop_goes_back_that_far() -> None:
    ring = members("a", "b", "c", "d", "e", "f")
    plan = plan_chain(ring, "c", DaisyChainConfig(max_hops=2), POOLS)
    assert plan.hops == 2 and [link.name for link in plan.links] == ["flkdc1", "flkdc2", LAST_STOP_LINK]
    assert str(next(link.remote for link in plan.links if link.name == LAST_STOP_LINK)) == "192.0.2.10"  # a


@pytest.mark.parametrize(("ring", "name", "enabled"), [
    (["node-a", "node-b"], "node-c", True),  # this node is not in the ring (no InternalIP)
    (["node-a"], "node-a", True),  # alone
    (["node-a", "node-b"], "node-a", False),
])
def test_no_ring_no_plan(ring: list[str], name: str, enabled: bool) -> None:
    plan = plan_chain(members(*ring), name, DaisyChainConfig(enabled=enabled), POOLS)
    assert not plan.links and not plan.rules and plan.size == 0 and plan.describe() == "off"


def test_each_node_has_its_own_mac() -> None:
    assert chain_mac(ipaddress.ip_address("192.0.2.10")) == "02:66:c0:00:02:0a"
    v6 = {chain_mac(ipaddress.ip_address(f"2001:db8::{i:x}")) for i in range(1, 200)}
    assert len(v6) == 199 and all(mac.startswith("02:66:") for mac in v6)


def test_the_chain_mark_is_the_masks_top_slot() -> None:
    assert slot_of_mark(chain_mark(DEFAULT_MARK_MASK), DEFAULT_MARK_MASK) == slot_count(DEFAULT_MARK_MASK)


BASE = {"nodeName": "n", "bird": {"routerId": "192.0.2.1", "asn": 65000}}


def test_daisy_chain_settings_and_their_defaults() -> None:
    config = parse_config(BASE, {})
    assert config.datapath.chaining and config.datapath.daisy_chain == DaisyChainConfig()
    custom = parse_config({**BASE, "datapath": {"daisyChain": {"port": 4790, "vni": 100, "maxHops": 3}}}, {})
    assert custom.datapath.daisy_chain == DaisyChainConfig(port=4790, vni=100, max_hops=3)
    unpinned = parse_config({**BASE, "datapath": {"connectionPinning": False}}, {})
    assert not unpinned.datapath.chaining


@pytest.mark.parametrize(("value", "message"), [
    ({"enabled": "yes"}, "datapath.daisyChain.enabled"),
    ({"port": 0}, "datapath.daisyChain.port"),
    ({"maxHops": 65}, "datapath.daisyChain.maxHops"),
    ({"vni": 16777215}, "datapath.daisyChain.vni"),
    ({"ring": []}, "datapath.daisyChain"),
])
def test_bad_daisy_chain_settings_are_refused_by_name(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "datapath": {"daisyChain": value}}, {})


def addresses(*last: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return {ipaddress.ip_address(f"192.0.2.{10 + i}") for i in last}


def test_bfd_watches_the_nearest_live_member_each_way() -> None:
    ring = members("a", "b", "c", "d", "e")  # 192.0.2.10 .. .14
    assert set(watched(ring, "a", (), 8)) == addresses(1, 4)  # b ahead, e behind
    # b went silent: a watches it (to see it back) and c, the next one ahead.
    assert set(watched(ring, "a", addresses(1), 8)) == addresses(1, 2, 4)
    # c sees b silent behind it: it watches a too, so a's session to c has both ends.
    assert set(watched(ring, "c", addresses(1), 8)) == addresses(0, 1, 3)
    assert set(watched(ring, "a", addresses(1, 2, 3, 4), 2)) == addresses(1, 2, 3, 4)  # maxHops each way
    assert watched(ring[:1], "a", (), 8) == () and watched(ring, "z", (), 8) == ()


def test_a_silent_member_is_left_out_of_the_plan_and_back_when_it_answers() -> None:
    ring = members("a", "b", "c")
    plan = plan_chain(ring, "a", DaisyChainConfig(), POOLS, down=addresses(1))
    assert plan.size == 2 and str(plan.links[0].remote) == "192.0.2.12"  # c is next now
    assert plan_chain(ring, "a", DaisyChainConfig(), POOLS, down=addresses(1, 2)).size == 0  # a alone
    assert plan_chain(ring, "a", DaisyChainConfig(), POOLS, down=addresses(0)).size == 3  # never itself
