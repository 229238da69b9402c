"""Connection pinning's pure parts: the mask, slots, what a pod's pin holds, start-up slot
planning, the ``datapath`` config key, the record's ``pinSlot``, and the nftables text."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flock.adapters.pinning import fingerprint, parse_listing, static_table, table_script
from flock.adapters.store import AllocationStore, decode_allocation, encode_allocation
from flock.core.model import Allocation, AllocationState, ContainerID
from flock.core.pinning import (
    DEFAULT_MARK_MASK,
    PodPin,
    choose_slot,
    mask_problem,
    pin_routes,
    pin_rules,
    plan_slots,
    slot_count,
    slot_mark,
    slot_of_mark,
    slot_table,
    table_slot,
)
from flock.core.settings import parse_config
from flock.errors import ConfigError
from tests.unit.factories import alloc

BASE = {"nodeName": "node-a", "bird": {"routerId": "192.0.2.1", "asn": 65001}}
POOLS = [ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8:100::/64")]


def test_the_default_mask_avoids_kube_proxy_and_gives_255_slots() -> None:
    assert mask_problem(DEFAULT_MARK_MASK) is None
    assert DEFAULT_MARK_MASK & 0xC000 == 0
    assert slot_count(DEFAULT_MARK_MASK) == 255
    assert slot_mark(1, DEFAULT_MARK_MASK) == 0x00100000 and slot_mark(255, DEFAULT_MARK_MASK) == 0x0FF00000
    assert slot_table(7) == 1_000_007 and table_slot(1_000_007, DEFAULT_MARK_MASK) == 7
    assert table_slot(1_000_256, DEFAULT_MARK_MASK) is None and table_slot(254, DEFAULT_MARK_MASK) is None


@pytest.mark.parametrize(("mask", "problem"), [
    (0, "not 0"), (0x0F0F0000, "contiguous"), (0xFFFF0000, "16 bits"), (0x30000, "2 bits"),
    (0xFF00, "kube-proxy"), (0x1_0000_0000, "32-bit"),
])
def test_bad_masks_say_why(mask: int, problem: str) -> None:
    found = mask_problem(mask)
    assert found is not None and problem in found


@given(st.integers(min_value=4, max_value=12), st.integers(min_value=16, max_value=20), st.data())
def test_a_slot_round_trips_through_its_mark_and_keeps_inside_the_mask(bits: int, shift: int,
                                                                        data: st.DataObject) -> None:
    mask = ((1 << bits) - 1) << shift
    slot = data.draw(st.integers(min_value=1, max_value=slot_count(mask)))
    mark = slot_mark(slot, mask)
    assert mark & ~mask == 0 and mark != 0
    assert slot_of_mark(mark | 0x4000 | 0x539, mask) == slot  # other tools' bits do not matter


def test_slots_are_given_round_robin_and_run_out() -> None:
    assert choose_slot(set(), 3) == 1
    assert choose_slot({1}, 3, last=1) == 2
    assert choose_slot({3}, 3, last=2) == 1  # wraps past a taken one
    assert choose_slot({1, 3}, 3, last=0) == 2
    assert choose_slot({1, 2, 3}, 3) is None


def test_a_pods_pin_routes_the_pools_of_its_families_via_its_addresses() -> None:
    pin = PodPin(3, "flock0000000a", (ipaddress.ip_address("203.0.113.5"),))  # IPv4 only
    assert [str(r) for r in pin_routes(pin, POOLS)] == [
        "198.51.100.0/24 via 203.0.113.5 dev flock0000000a onlink table 1000003"]
    assert [str(r) for r in pin_rules(pin, DEFAULT_MARK_MASK)] == [
        "ip -4 rule pref 1000 fwmark 0x300000/0xff00000 lookup 1000003"]


def _record(name: str, slot: int | None, *, anycast: bool = True,
            state: AllocationState = AllocationState.COMMITTED) -> Allocation:
    base = alloc(name)
    return dataclasses.replace(base, pin_slot=slot, state=state,
                               anycast=base.anycast if anycast else ())


def test_start_up_keeps_valid_slots_adopts_the_kernels_and_gives_new_ones() -> None:
    records = [
        _record("a", 1),
        _record("b", 1),  # a duplicate: b loses it
        _record("c", None),  # predates pinning: its veth has slot 5 in the kernel
        _record("d", 300),  # beyond the mask now
        _record("e", None, anycast=False),  # nothing to pin
        _record("f", 2, state=AllocationState.RELEASING),  # keeps its slot until its DEL is over
        _record("g", None, state=AllocationState.PENDING),
    ]
    kernel = {records[2].host_ifname: 5, records[1].host_ifname: 2}  # b's veth: slot 2, but f holds it
    plan = plan_slots(records, kernel, enabled=True, count=255)
    slots = {cid[len("c-default-"):]: slot for cid, slot in plan.slots.items()}
    assert slots == {"a": 1, "b": 3, "c": 5, "d": 4, "e": None, "f": 2, "g": None}
    assert sorted(cid[len("c-default-"):] for cid in plan.changed) == ["b", "c", "d"]
    assert plan.adopted == (records[2].container_id,)
    assert plan.exhausted == ()


def test_start_up_with_pinning_off_clears_every_slot_and_a_full_node_says_who_is_left_out() -> None:
    records = [_record("a", 1), _record("b", None), _record("c", None)]
    off = plan_slots(records, {}, enabled=False, count=255)
    assert set(off.slots.values()) == {None} and off.changed == (records[0].container_id,)
    full = plan_slots(records, {}, enabled=True, count=2)
    assert full.exhausted == (ContainerID("c-default-c"),)


def test_the_datapath_key_is_parsed_and_checked() -> None:
    config = parse_config(BASE, environ={})
    assert config.datapath.connection_pinning is True and config.datapath.mark_mask == DEFAULT_MARK_MASK
    config = parse_config({**BASE, "datapath": {"connectionPinning": False, "markMask": "0x00f00000"}}, environ={})
    assert config.datapath.connection_pinning is False and config.datapath.mark_mask == 0x00F00000


@pytest.mark.parametrize(("datapath", "message"), [
    ({"connectionPinning": "yes"}, "datapath.connectionPinning: 'yes' must be true or false"),
    ({"markMask": 0xC000}, "datapath.markMask: 0x0000c000 has 2 bits"),
    ({"markMask": 0xF000}, "datapath.markMask: 0x0000f000 overlaps kube-proxy's marks"),
    ({"markMask": 0x0F0F0000}, "datapath.markMask: 0x0f0f0000 must be contiguous bits"),
    ({"markMask": "banana"}, "datapath.markMask: 'banana' is not an integer"),
    ({"markMask": True}, "datapath.markMask: True is not an integer"),
    ({"pinning": True}, "datapath: unknown key(s) pinning"),
    ([], "datapath: expected a mapping"),
])
def test_a_bad_datapath_key_is_named(datapath: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**BASE, "datapath": datapath}, environ={})


async def test_records_keep_their_slot_and_old_records_load_unpinned(tmp_path: pathlib.Path) -> None:
    pinned = _record("a", 7)
    assert decode_allocation(encode_allocation(pinned)) == pinned
    old = json.loads(encode_allocation(_record("b", None)))
    assert "pinSlot" not in old  # what an agent before pinning wrote, and reads back
    assert decode_allocation(json.dumps(old)).pin_slot is None
    with pytest.raises(ValueError, match="pinSlot"):
        decode_allocation(json.dumps({**old, "pinSlot": "7"}))
    store = AllocationStore(tmp_path)
    await store.load()
    await store.put(pinned)
    reloaded = AllocationStore(tmp_path)
    assert await reloaded.load() == [] and reloaded.all() == [pinned]


def test_the_table_text_is_stable_and_fingerprinted() -> None:
    static = static_table(DEFAULT_MARK_MASK, POOLS)
    assert static == static_table(DEFAULT_MARK_MASK, list(reversed(POOLS)) + POOLS[:1])  # order, duplicates
    assert fingerprint(static).startswith("flock ") and fingerprint(static) != fingerprint(
        static_table(DEFAULT_MARK_MASK, POOLS[:1]))
    assert static.count("chain save_slot_") == 255 and static.count("chain restore_slot_") == 255
    assert "meta mark set meta mark and 0xf00fffff or 0x00300000" in static  # (mark & ~mask) | value
    assert "ct mark set ct mark and 0xf00fffff or 0x00300000" in static
    pin = PodPin(3, "flock0000000a", ())
    assert '"flock0000000a" : goto save_slot_3' in table_script(DEFAULT_MARK_MASK, POOLS, [pin])


def test_a_listing_is_read_back() -> None:
    listing = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "flock"}},
        {"map": {"name": "pod_slot", "elem": [["flock0000000a", {"goto": {"target": "save_slot_3"}}],
                                              ["flock0000000b", {"jump": {"target": "elsewhere"}}]]}},
        {"map": {"name": "slot_restore", "comment": "flock 0123"}},
        {"chain": {"name": "prerouting"}},
        {"rule": {"chain": "prerouting"}}, {"rule": {"chain": "prerouting"}},
    ]}
    table = parse_listing(json.dumps(listing))
    assert table.pods == {"flock0000000a": 3}
    assert table.fingerprint == "flock 0123" and table.chains == frozenset({"prerouting"})
    assert table.rules == {"prerouting": 2}
