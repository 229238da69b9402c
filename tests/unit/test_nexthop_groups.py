"""Resilient next-hop groups without a kernel: the config keys, the encodings (checked
against what iproute2 sends), and the planning of requests (flock.adapters.nhgroups)."""

from __future__ import annotations

import ipaddress
import re
import socket

import pytest

from flock.adapters import rtnetlink as rtnl
from flock.adapters.nhgroups import DEFAULT_BUCKETS, NexthopState, id_ranges
from flock.core.settings import parse_config
from flock.errors import ConfigError

BASE = {"nodeName": "node-a", "bird": {"routerId": "192.0.2.1", "asn": 65001}}
ADDRESS = ipaddress.ip_address("198.51.100.10")
GW = [ipaddress.ip_address(f"203.0.113.1{n}").packed for n in range(3)]


def test_the_keys_default_to_resilient_groups_of_128_buckets() -> None:
    config = parse_config(BASE, environ={})
    assert (config.datapath.nexthop_groups, config.datapath.resilient_buckets) == ("resilient", DEFAULT_BUCKETS)
    config = parse_config({**BASE, "datapath": {"nexthopGroups": "multipath", "resilientBuckets": 512}}, environ={})
    assert (config.datapath.nexthop_groups, config.datapath.resilient_buckets) == ("multipath", 512)


@pytest.mark.parametrize(("datapath", "message"), [
    ({"nexthopGroups": "ecmp"}, "datapath.nexthopGroups: 'ecmp' must be one of resilient, multipath"),
    ({"resilientBuckets": 4}, "datapath.resilientBuckets: 4 must be an integer 8-32768"),
    ({"resilientBuckets": 70000}, "datapath.resilientBuckets: 70000 must be an integer 8-32768"),
    ({"resilientBuckets": "128"}, "datapath.resilientBuckets: '128' must be an integer 8-32768"),
])
def test_a_bad_key_is_named(datapath: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**BASE, "datapath": datapath}, environ={})


def test_id_ranges_are_per_protocol_and_disjoint() -> None:
    members, groups = id_ranges(201)
    assert (members.start, members[-1], groups.start, groups[-1]) == (
        2_010_000_001, 2_014_999_999, 2_015_000_000, 2_019_999_999)
    assert id_ranges(255)[1][-1] < 2**32 and id_ranges(202)[0].start > groups[-1]


def test_a_resilient_group_is_encoded_as_iproute2_sends_it() -> None:
    # ip nexthop add id 7 group 1/2 type resilient buckets 128 idle_timer 10 unbalanced_timer 60 proto 201
    payload = rtnl.resilient_group_request(7, 201, [1, 2], buckets=128, idle_timer=10, unbalanced_timer=60)
    assert rtnl.NHMSG.unpack_from(payload) == (socket.AF_UNSPEC, 0, 201, 0, 0)
    attrs = rtnl.attributes(payload, rtnl.NHMSG.size, len(payload))
    assert rtnl.u32(payload, attrs[rtnl.NHA_ID]) == 7
    start, end = attrs[rtnl.NHA_GROUP]
    assert payload[start:end] == bytes([1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]), "weight 1 is sent as 0"
    assert payload[attrs[rtnl.NHA_GROUP_TYPE][0]:attrs[rtnl.NHA_GROUP_TYPE][0] + 2] == b"\x01\x00"
    obj = rtnl.nexthop_object(payload, 0, len(payload))
    assert (obj.id, obj.protocol, obj.group, obj.group_type, obj.buckets, obj.idle_timer, obj.unbalanced_timer) == (
        7, 201, (1, 2), rtnl.NEXTHOP_GRP_TYPE_RES, 128, 1000, 6000), "timers in clock_t (1/100 s)"


def test_a_member_is_onlink_and_decodes_back() -> None:
    payload = rtnl.nexthop_request(5, 201, GW[0], 9)
    assert rtnl.NHMSG.unpack_from(payload) == (socket.AF_INET, 0, 201, 0, rtnl.RTNH_F_ONLINK)
    obj = rtnl.nexthop_object(payload, 0, len(payload))
    assert (obj.id, obj.gateway, obj.index, obj.group) == (5, GW[0], 9, ())


def _kinds(requests: list[tuple[rtnl.Request, str]]) -> list[str]:
    return [label.split(" ")[0] if label != "route" else "route" for _, label in requests]


def test_members_come_before_the_group_before_the_route_and_a_change_is_in_place() -> None:
    state = NexthopState(201, 128)
    state.load([])
    first = state.plan_replace(ADDRESS, [(GW[0], 4), (GW[1], 5)], 201, new=True)
    assert _kinds(first) == ["next-hop", "next-hop", "resilient", "route"]
    assert first[2][0][1] == rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    (group, protocol) = state.routes[ADDRESS]
    change = state.plan_replace(ADDRESS, [(GW[1], 5), (GW[2], 6)], 201, new=False)
    assert _kinds(change) == ["next-hop", "resilient"], "a new member and the group: not the route"
    assert change[1][0][1] == rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE and state.routes[ADDRESS] == (group, protocol)
    assert state.plan_replace(ADDRESS, [(GW[1], 5), (GW[2], 6)], 201, new=False) == [], "nothing to change"
    assert _kinds(state.plan_replace(ADDRESS, [(GW[1], 5), (GW[2], 6)], 203, new=False)) == ["route"]
    assert [(nh, is_group) for nh, is_group in state.garbage()] == [(state.members[GW[0], 4], False)]
    state.unbind(ADDRESS)
    assert [is_group for _, is_group in state.garbage()] == [True, False, False, False], "the group, then members"


def test_new_ids_skip_every_id_the_kernel_holds() -> None:
    members, groups = id_ranges(201)
    state = NexthopState(201, 128)
    state.load([rtnl.NexthopObject(members.start, 99, gateway=GW[0], index=3),
                rtnl.NexthopObject(groups.start, 99, group=(members.start,))])
    assert state.members == {} and state.groups == {}, "another protocol's objects are not flock's"
    state.plan_replace(ADDRESS, [(GW[0], 4)], 201, new=True)
    assert state.members == {(GW[0], 4): members.start + 1} and set(state.groups) == {groups.start + 1}


def test_installing_routes_leaves_nothing_to_look_for_and_a_member_leaving_does() -> None:
    state = NexthopState(201, 128)
    state.load([])
    state.bind({})
    assert state.garbage() == [] and not state.litter, "a dump's objects were looked at once"
    state.plan_replace(ADDRESS, [(GW[0], 4), (GW[1], 5)], 201, new=True)
    assert not state.litter, "a new prefix leaves no object unused"
    state.plan_replace(ADDRESS, [(GW[1], 5)], 201, new=False)
    assert state.litter
    assert state.garbage() == [(state.members[GW[0], 4], False)]
    assert not state.litter and state.garbage() == []
    state.unbind(ADDRESS)
    assert [is_group for _, is_group in state.garbage()] == [True, False, False]
