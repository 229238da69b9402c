"""The resolver: allocations × eligible pods -> sorted next hops per anycast IP."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from hypothesis import given
from hypothesis import strategies as st

from flock.core.model import Allocation, IPAddress, Nexthop, PodRef, PodStatus
from flock.core.podcache import PodCache
from flock.core.pools import pool_rejection
from flock.core.resolver import (
    FAMILY_MISMATCH,
    REJECTED,
    Contribution,
    DesiredRoutes,
    PoolPolicy,
    combine,
    contribution,
    resolve,
)
from flock.core.settings import AnycastPool
from tests.unit.factories import POOLS, alloc, pod_body, status

A4 = ipaddress.ip_address("198.51.100.10")
B4 = ipaddress.ip_address("198.51.100.11")
A6 = ipaddress.ip_address("2001:db8:100::10")


def test_one_eligible_pod_gives_one_nexthop() -> None:
    a = alloc("web-1", dev="flock00000001")
    result = resolve([a], dict([status("web-1")]), POOLS)
    assert result.routes == {A4: (Nexthop(ipaddress.ip_address("192.0.2.10"), "flock00000001"),)}
    assert result.findings == ()


def test_two_pods_sharing_an_ip_give_two_sorted_nexthops() -> None:
    a = alloc("web-1", ips=("192.0.2.20", "2001:db8::20"), dev="flock00000001")
    b = alloc("web-2", ips=("192.0.2.10", "2001:db8::10"), dev="flock00000002")
    result = resolve([a, b], dict([status("web-1"), status("web-2")]), POOLS)
    assert result.routes[A4] == (
        Nexthop(ipaddress.ip_address("192.0.2.10"), "flock00000002"),
        Nexthop(ipaddress.ip_address("192.0.2.20"), "flock00000001"),
    )


def test_not_ready_pod_is_dropped_from_the_nexthops() -> None:
    a = alloc("web-1", ips=("192.0.2.20", "2001:db8::20"))
    b = alloc("web-2", ips=("192.0.2.10", "2001:db8::10"))
    result = resolve([a, b], dict([status("web-1"), status("web-2", eligible=False)]), POOLS)
    assert [hop.via for hop in result.routes[A4]] == [ipaddress.ip_address("192.0.2.20")]


def test_ip_with_no_ready_pod_is_omitted() -> None:
    a = alloc("web-1")
    result = resolve([a], dict([status("web-1", eligible=False, reason="terminating")]), POOLS)
    assert result.routes == {}
    assert result.serving == {}


def test_pod_unknown_to_the_watch_is_not_routed() -> None:
    assert resolve([alloc("web-1")], {}, POOLS).routes == {}


def test_pending_allocation_is_skipped() -> None:
    result = resolve([alloc("web-1", committed=False)], dict([status("web-1")]), POOLS)
    assert result.routes == {}


def test_mixed_v4_and_v6_use_the_same_family_nexthop() -> None:
    a = alloc("web-1", anycast=("2001:db8:100::10", "198.51.100.10"), dev="flock00000001")
    result = resolve([a], dict([status("web-1")]), POOLS)
    assert result.routes[A4] == (Nexthop(ipaddress.ip_address("192.0.2.10"), "flock00000001"),)
    assert result.routes[A6] == (Nexthop(ipaddress.ip_address("2001:db8::10"), "flock00000001"),)


def test_family_mismatch_warns_and_skips() -> None:
    a = alloc("web-1", ips=("192.0.2.10",), anycast=("198.51.100.10", "2001:db8:100::10"))
    result = resolve([a], dict([status("web-1")]), POOLS)
    assert set(result.routes) == {A4}
    [finding] = result.findings
    assert (finding.reason, finding.count) == (FAMILY_MISMATCH, 1)
    assert finding.message == "2001:db8:100::10 skipped: the pod has no IPv6 address to route it to"


def test_ip_outside_the_pools_is_rejected_not_routed() -> None:
    a = alloc("web-1", anycast=("203.0.113.5", "198.51.100.10"))
    result = resolve([a], dict([status("web-1")]), POOLS)
    assert set(result.routes) == {A4}
    [finding] = result.findings
    assert (finding.reason, finding.count) == (REJECTED, 1)
    assert finding.message.startswith("203.0.113.5 is outside the anycast pools")


def test_allocation_of_an_older_pod_incarnation_is_not_routed() -> None:
    a = alloc("web-0", uid="old-uid")
    result = resolve([a], dict([status("web-0", uid="new-uid")]), POOLS)
    assert result.routes == {}


def test_resolution_is_deterministic() -> None:
    allocations = [alloc(f"web-{i}", ips=(f"192.0.2.{10 + i}", f"2001:db8::{10 + i:x}"),
                         anycast=("198.51.100.10", "2001:db8:100::10"), dev=f"flock{i:08x}")
                   for i in range(8)]
    pods = dict(status(f"web-{i}", eligible=i % 3 != 0) for i in range(8))
    first = resolve(allocations, pods, POOLS)
    for _ in range(10):
        random.shuffle(allocations)
        assert resolve(allocations, pods, POOLS) == first


# --- properties ---------------------------------------------------------------------------

anycast_ips = st.sampled_from(["198.51.100.10", "198.51.100.11", "203.0.113.9",
                               "2001:db8:100::10", "2001:db8:200::1"])
pod_specs = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=200),  # pod index -> unique ips/dev
        st.lists(anycast_ips, max_size=4, unique=True),
        st.booleans(),  # eligible
        st.booleans(),  # committed
        st.sampled_from(["both", "v4", "v6"]),
    ),
    max_size=12, unique_by=lambda spec: spec[0],
)


PodSpec = tuple[int, list[str], bool, bool, str]  # index, anycast, eligible, committed, families


def build(specs: list[PodSpec]) -> tuple[list[Allocation], dict[tuple[str, str], PodStatus]]:
    allocations: list[Allocation] = []
    pods: dict[tuple[str, str], PodStatus] = {}
    for index, anycast, eligible, committed, families in specs:
        ips = {"both": (f"192.0.2.{index}", f"2001:db8::{index:x}"),
               "v4": (f"192.0.2.{index}",), "v6": (f"2001:db8::{index:x}",)}[families]
        allocations.append(alloc(f"p{index}", ips=ips, anycast=tuple(anycast), committed=committed,
                                 dev=f"flock{index:08x}"))
        key, pod = status(f"p{index}", eligible)
        pods[key] = pod
    return allocations, pods


@given(pod_specs, st.randoms())
def test_input_order_never_changes_the_output(specs: list[PodSpec], rnd: random.Random) -> None:
    allocations, pods = build(specs)
    expected = resolve(allocations, pods, POOLS)
    rnd.shuffle(allocations)
    shuffled_pods = list(pods.items())
    rnd.shuffle(shuffled_pods)
    assert resolve(allocations, dict(shuffled_pods), POOLS) == expected


@given(pod_specs)
def test_every_nexthop_is_an_eligible_committed_pod_of_the_same_family(specs: list[PodSpec]) -> None:
    allocations, pods = build(specs)
    result = resolve(allocations, pods, POOLS)
    by_dev = {a.host_ifname: a for a in allocations}
    for address, hops in result.routes.items():
        assert hops, "a route never has zero next hops"
        assert list(hops) == sorted(hops, key=Nexthop.sort_key)
        for hop in hops:
            owner = by_dev[hop.dev]
            assert owner.state.value == "committed"
            assert pods[(owner.pod.namespace, owner.pod.name)].eligible
            assert address in owner.anycast
            assert hop.via.version == address.version and hop.via in owner.pod_ips


# Pools that may be restricted to namespaces; pods live in one of three namespaces.
restricted_pools = st.lists(
    st.builds(AnycastPool, st.sampled_from([ipaddress.ip_network(c) for c in (
        "198.51.100.0/24", "198.51.100.8/29", "2001:db8:100::/64", "2001:db8:100::/120")]),
        st.none() | st.frozensets(st.sampled_from(["default", "payments", "web"]), max_size=2)),
    max_size=4)


@given(pod_specs, restricted_pools, st.lists(st.sampled_from(["default", "payments", "web"]), min_size=201,
                                              max_size=201))
def test_nothing_outside_the_pools_survives(specs: list[PodSpec], pools: list[AnycastPool],
                                            namespaces: list[str]) -> None:
    allocations, pods = build(specs)
    # Move each pod to its namespace, keeping allocation and status in step.
    allocations = [dataclasses.replace(a, pod=dataclasses.replace(a.pod, namespace=namespaces[i]))
                   for i, a in enumerate(allocations)]
    pods = {(namespaces[i], key[1]): dataclasses.replace(status_, ref=dataclasses.replace(
        status_.ref, namespace=namespaces[i])) for i, (key, status_) in enumerate(pods.items())}
    result = resolve(allocations, pods, pools)
    for address, hops in result.routes.items():
        owners = [a for a in allocations if a.host_ifname in {hop.dev for hop in hops}]
        for owner in owners:
            assert any(address in pool.cidr and (pool.namespaces is None or owner.pod.namespace in pool.namespaces)
                       for pool in pools if pool.cidr.version == address.version), (address, owner.pod, pools)


@given(restricted_pools, st.lists(st.tuples(st.sampled_from([
    "198.51.100.0", "198.51.100.8", "198.51.100.15", "198.51.100.255", "203.0.113.9", "2001:db8:100::",
    "2001:db8:100::10", "2001:db8:100::1:0", "2001:db8:200::1"]), st.sampled_from(["default", "payments", "web"])),
    max_size=12))
def test_the_pool_policy_answers_as_pool_rejection_also_when_asked_again(
        pools: list[AnycastPool], questions: list[tuple[str, str]]) -> None:
    policy = PoolPolicy(pools, limit=5)
    for text, namespace in questions + questions:
        address = ipaddress.ip_address(text)
        assert policy.rejection(address, namespace) == pool_rejection(address, namespace, pools)


def test_a_pod_with_two_addresses_of_a_family_is_routed_through_the_first() -> None:
    a = alloc("web-1", ips=("192.0.2.10", "192.0.2.11", "2001:db8::10"), anycast=("198.51.100.10",
                                                                                   "2001:db8:100::10"))
    part = contribution(a, dict([status("web-1")])[("default", "web-1")], POOLS)
    assert part is not None
    assert [hop.via for _, hop in part.hops] == [ipaddress.ip_address("192.0.2.10"),
                                                 ipaddress.ip_address("2001:db8::10")]


# The annotation can change after the pod's network was set up (kubectl annotate).


def test_ip_taken_off_the_annotation_is_no_longer_routed_to_the_pod() -> None:
    a = alloc("web-1", anycast=("198.51.100.10", "2001:db8:100::10"))
    result = resolve([a], dict([status("web-1", listed=("2001:db8:100::10",))]), POOLS)
    assert set(result.routes) == {A6}
    assert result.serving[a.pod] == frozenset({A6})
    assert result.findings == ()


def test_ip_added_to_the_annotation_is_reported_and_not_routed() -> None:
    # It is not on the pod's lo: a route to the pod would black-hole it.
    a = alloc("web-1", anycast=("198.51.100.10",))
    added = ipaddress.ip_address("198.51.100.11")
    result = resolve([a], dict([status("web-1", listed=("198.51.100.10", "198.51.100.11"))]), POOLS)
    assert set(result.routes) == {A4}
    [finding] = result.findings
    assert finding.reason == REJECTED and finding.message.startswith(f"{added} not routed")
    assert "after the pod's network was set up" in finding.message and "recreated" in finding.message


def test_an_annotation_ip_outside_the_pools_is_reported_as_such() -> None:
    # Listed at ADD or added later: either way the pod does not have it, and the pool is why.
    a = alloc("web-1", anycast=("198.51.100.10",))
    result = resolve([a], dict([status("web-1", listed=("198.51.100.10", "203.0.113.5"))]), POOLS)
    assert set(result.routes) == {A4}
    [finding] = result.findings
    assert finding.reason == REJECTED
    assert finding.message.startswith("203.0.113.5 is outside the anycast pools")


def test_annotation_edits_with_typos_change_nothing_and_are_reported() -> None:
    # The pod cache keeps the last set that parsed; the resolver routes that and reports.
    a = alloc("web-1", anycast=("198.51.100.10", "198.51.100.11"))
    cache = PodCache("node-a")

    def routed_after(annotation: str) -> tuple[set[IPAddress], list[str]]:
        cache.observe("MODIFIED", pod_body("web-1", uid="", anycast=annotation))
        result = resolve([a], cache.snapshot(), POOLS)
        return set(result.routes), [f.message for f in result.findings]

    assert routed_after("198.51.100.10, 198.51.100.11") == ({A4, B4}, [])
    assert routed_after("198.51.100.10") == ({A4}, [])  # .11 taken off: withdrawn
    routes, problems = routed_after("198.51.100.10/32, 198.51.100.11")  # a typo: nothing changes
    assert routes == {A4}, "a typo must neither withdraw .10 nor bring back .11"
    assert len(problems) == 1 and "'198.51.100.10/32'" in problems[0] and "last annotation that parsed" in problems[0]
    # Another edit with another typo: reported (the message names the entries that do not parse).
    _, again = routed_after("198.51.100.10/33")
    assert len(again) == 1 and again != problems and "'198.51.100.10/33'" in again[0]
    assert routed_after("198.51.100.11") == ({B4}, [])  # fixed: it counts again


def test_annotation_changes_are_reported_even_while_the_pod_is_not_ready() -> None:
    a = alloc("web-1", anycast=("198.51.100.10",))
    result = resolve([a], dict([status("web-1", eligible=False, listed=("198.51.100.11",))]), POOLS)
    assert result.routes == {}
    [finding] = result.findings
    assert finding.message.startswith("198.51.100.11 not routed")


def test_every_problem_of_every_entry_is_reported_in_one_finding_per_reason() -> None:
    # A hijack attempt next to a typo: both are heard of, in one Warning.
    a = alloc("web-1", anycast=("198.51.100.19",))
    cache = PodCache("node-a")
    cache.observe("ADDED", pod_body("web-1", uid="", anycast="198.51.100.19, 8.8.8.8, bogus"))
    result = resolve([a], cache.snapshot(), POOLS)
    assert set(result.routes) == {ipaddress.ip_address("198.51.100.19")}
    [finding] = result.findings
    assert finding.reason == REJECTED and finding.count == 2
    assert "'bogus' is not an IP address" in finding.message
    assert "8.8.8.8 is outside the anycast pools" in finding.message
    assert "last annotation that parsed" in finding.message


def test_thousands_of_bad_entries_make_one_bounded_finding() -> None:
    a = alloc("web-1", anycast=("198.51.100.19",))
    cache = PodCache("node-a", max_anycast=4)
    junk = " ".join(["junk"] * 500 + [f"2001:db8:100::{i:x}" for i in range(1, 200)])[:4096]
    cache.observe("ADDED", pod_body("web-1", uid="", anycast=junk))
    [finding] = resolve([a], cache.snapshot(), POOLS).findings
    # 500 junk and one address cut at 4096 bytes, the excess, 4 kept addresses not on the pod
    assert finding.count == 501 + 1 + 4
    assert len(finding.problems) == 3 and len(finding.message) < 600
    assert finding.message.startswith("506 problems: flock.io/anycast: 'junk' is not an IP address")
    assert "and 503 more" in finding.message


_hop_choices = [Nexthop(ipaddress.ip_address(f"192.0.2.{n}"), f"flock0000000{n}") for n in range(1, 4)]
_pairs = st.lists(st.tuples(st.sampled_from([A4, B4, A6]), st.sampled_from(_hop_choices)), max_size=4)
_parts = st.builds(
    lambda pod, hops, fallback: Contribution(PodRef("default", f"web-{pod}", ""), tuple(hops), (),
                                             fallback=tuple(fallback)),
    st.integers(0, 2), _pairs, _pairs,
)


@given(st.lists(st.tuples(st.integers(0, 3), st.none() | _parts), max_size=30))
def test_desired_routes_kept_up_to_date_equal_combining_from_scratch(
        steps: list[tuple[int, Contribution | None]]) -> None:
    # Slots stand for allocations; each step replaces one slot's contribution (None: gone).
    desired = DesiredRoutes()
    slots: dict[int, Contribution | None] = {}
    for slot, part in steps:
        before = dict(desired.routes)
        was_last_resort = set(desired.last_resort)
        changed = desired.replace(slots.get(slot), part)
        slots[slot] = part
        combined = combine(p for p in slots.values() if p is not None)
        expected = combined.routes
        assert desired.routes == expected and desired.last_resort == combined.last_resort
        assert changed == {a for a in before.keys() | expected.keys() if before.get(a) != expected.get(a)
                           or (a in was_last_resort) != (a in combined.last_resort)}
        # An address goes to its last-resort pods only while no eligible pod serves it.
        eligible = {a for p in slots.values() if p is not None for a, _ in p.hops}
        assert combined.last_resort == set(expected) - eligible
