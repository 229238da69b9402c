"""The kernel diff: minimal edits, empty when equal."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from flock.core.model import Nexthop, RouteTable, sorted_nexthops
from flock.core.routediff import DeleteRoute, ReplaceRoute, apply_edits, diff_routes

A = ipaddress.ip_address("198.51.100.10")
B = ipaddress.ip_address("2001:db8:100::10")
H1 = Nexthop(ipaddress.ip_address("192.0.2.10"), "flock00000001")
H2 = Nexthop(ipaddress.ip_address("192.0.2.11"), "flock00000002")


def test_equal_tables_need_no_edit() -> None:
    table = {A: (H1, H2)}
    assert diff_routes(table, dict(table)) == []


def test_new_changed_and_gone_routes() -> None:
    edits = diff_routes({A: (H1,)}, {A: (H1, H2), B: (H1,)})
    assert edits == [ReplaceRoute(A, (H1,)), DeleteRoute(B)]


def test_a_prefix_flock_does_not_route_yet_is_added_not_replaced() -> None:
    # Replace would overwrite another protocol's route for the prefix; add refuses to.
    assert diff_routes({A: (H1,)}, {}) == [ReplaceRoute(A, (H1,), new=True)]
    assert str(diff_routes({A: (H1,)}, {})[0]) == "add 198.51.100.10/32 via 192.0.2.10 dev flock00000001"


def test_replaces_come_before_deletes() -> None:
    edits = diff_routes({B: (H1,)}, {A: (H1,)})
    assert edits == [ReplaceRoute(B, (H1,), new=True), DeleteRoute(A)]


tables = st.dictionaries(
    st.sampled_from([A, B, ipaddress.ip_address("198.51.100.11")]),
    st.lists(st.sampled_from([H1, H2]), min_size=1, max_size=2).map(sorted_nexthops),
)


@given(tables, tables)
def test_applying_the_diff_reaches_the_desired_table(desired: RouteTable, current: RouteTable) -> None:
    edits = diff_routes(desired, current)
    assert apply_edits(current, edits) == desired
    assert diff_routes(desired, apply_edits(current, edits)) == []
    changed = {a for a in set(desired) | set(current) if desired.get(a) != current.get(a)}
    assert len(edits) == len(changed)  # minimal: one edit per differing prefix
