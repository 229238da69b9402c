"""The kernel diff: minimal edits, empty when equal; withdrawal re-tags, deletion waits."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from flock.core.model import IPAddress, Nexthop, RouteTable, sorted_nexthops
from flock.core.routediff import (
    DeleteRoute,
    KernelRoutes,
    ReplaceRoute,
    WithdrawRoute,
    apply_edits,
    diff_routes,
    expired,
)

A = ipaddress.ip_address("198.51.100.10")
B = ipaddress.ip_address("2001:db8:100::10")
C = ipaddress.ip_address("198.51.100.11")
H1 = Nexthop(ipaddress.ip_address("192.0.2.10"), "flock00000001")
H2 = Nexthop(ipaddress.ip_address("192.0.2.11"), "flock00000002")


def test_equal_tables_need_no_edit() -> None:
    table = {A: (H1, H2)}
    assert diff_routes(table, KernelRoutes(dict(table))) == []


def test_new_changed_and_unwanted_routes() -> None:
    edits = diff_routes({A: (H1,)}, KernelRoutes({A: (H1, H2), B: (H1,)}))
    assert edits == [ReplaceRoute(A, (H1,)), WithdrawRoute(B, (H1,))]
    assert str(edits[1]) == "withdraw 2001:db8:100::10/128 via 192.0.2.10 dev flock00000001"


def test_a_prefix_flock_does_not_route_yet_is_added_not_replaced() -> None:
    # Replace would overwrite another protocol's route for the prefix; add refuses to.
    assert diff_routes({A: (H1,)}, KernelRoutes()) == [ReplaceRoute(A, (H1,), new=True)]
    assert str(diff_routes({A: (H1,)}, KernelRoutes())[0]) == "add 198.51.100.10/32 via 192.0.2.10 dev flock00000001"


def test_a_withdrawn_route_wanted_again_is_replaced_and_an_unwanted_one_is_left_to_linger() -> None:
    current = KernelRoutes(withdrawn={A: (H1,), B: (H2,)})
    assert diff_routes({A: (H2,)}, current) == [ReplaceRoute(A, (H2,), new=False)]


def test_replaces_come_before_withdrawals() -> None:
    edits = diff_routes({B: (H1,)}, KernelRoutes({A: (H1,)}))
    assert edits == [ReplaceRoute(B, (H1,), new=True), WithdrawRoute(A, (H1,))]


def test_only_withdrawn_routes_whose_linger_is_over_are_deleted() -> None:
    assert expired({A: 10.0, B: 12.0, C: 9.0}, now=10.0) == [DeleteRoute(A, withdrawn=True),
                                                             DeleteRoute(C, withdrawn=True)]
    assert str(DeleteRoute(A, withdrawn=True)) == "delete 198.51.100.10/32 (withdrawn)"
    assert str(DeleteRoute(A)) == "delete 198.51.100.10/32"


def test_applied_edits_move_a_route_between_kinds() -> None:
    kernel = KernelRoutes({A: (H1,)}, {B: (H2,)})
    kernel = apply_edits(kernel, [WithdrawRoute(A, (H1,)), ReplaceRoute(B, (H1,))])
    assert kernel == KernelRoutes({B: (H1,)}, {A: (H1,)})
    kernel = apply_edits(kernel, [DeleteRoute(A, withdrawn=True), DeleteRoute(B)])
    assert kernel == KernelRoutes({}, {})


tables = st.dictionaries(
    st.sampled_from([A, B, C]),
    st.lists(st.sampled_from([H1, H2]), min_size=1, max_size=2).map(sorted_nexthops),
)


@given(tables, tables, tables)
def test_applying_the_diff_advertises_exactly_the_desired_table(
        desired: RouteTable, advertised: RouteTable, withdrawn: RouteTable) -> None:
    current = KernelRoutes(advertised, {a: h for a, h in withdrawn.items() if a not in advertised})
    edits = diff_routes(desired, current)
    after = apply_edits(current, edits)
    assert after.advertised == desired
    assert diff_routes(desired, after) == []
    # Nothing unwanted is deleted outright: it is withdrawn and still forwards.
    assert set(after.withdrawn) == (set(current.withdrawn) | set(advertised)) - set(desired)
    changed = {a for a in set(desired) | set(advertised) if desired.get(a) != advertised.get(a)}
    assert len(edits) == len(changed)  # minimal: one edit per differing prefix


def test_a_route_bird_cannot_learn_is_written_again_and_then_learnable() -> None:
    current = KernelRoutes({A: (H1,), B: (H2,)}, unlearnable=frozenset({A, B}))
    edits = diff_routes({A: (H1,)}, current)
    assert edits == [ReplaceRoute(A, (H1,)), WithdrawRoute(B, (H2,))]
    assert apply_edits(current, edits) == KernelRoutes({A: (H1,)}, {B: (H2,)})


@given(tables, tables, st.sets(st.sampled_from([A, B, C])))
def test_a_diff_of_some_addresses_is_the_full_diff_of_those_addresses(
        desired: RouteTable, advertised: RouteTable, only: set[IPAddress]) -> None:
    current = KernelRoutes(advertised)
    assert diff_routes(desired, current, only) == [e for e in diff_routes(desired, current) if e.address in only]
