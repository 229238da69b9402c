"""Annotation parsing, pool policy and eligibility: the pure rules at the edge."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flock.core.annotation import parse_anycast
from flock.core.eligibility import READY_ONLY, ineligibility_reason, pod_anycast_eligible
from flock.core.model import IPAddress
from flock.core.pools import pool_rejection
from flock.core.settings import AnycastPool
from tests.unit.factories import pod_body


def test_commas_and_spaces_separate_mixed_families() -> None:
    parsed = parse_anycast(" 198.51.100.10,2001:DB8:100::0A  198.51.100.11,\n")
    assert [str(a) for a in parsed.addresses] == ["198.51.100.10", "2001:db8:100::a", "198.51.100.11"]
    assert parsed.errors == ()


def test_duplicates_are_dropped_after_canonicalisation() -> None:
    parsed = parse_anycast("2001:db8:100::a, 2001:DB8:100:0::A, 198.51.100.10 198.51.100.10")
    assert [str(a) for a in parsed.addresses] == ["2001:db8:100::a", "198.51.100.10"]


def test_each_bad_entry_is_reported_and_good_ones_still_count() -> None:
    parsed = parse_anycast("198.51.100.10, banana, 198.51.100.300, 198.51.100.0/24, 127.0.0.1")
    assert [str(a) for a in parsed.addresses] == ["198.51.100.10"]
    assert parsed.error_count == 4
    assert len(parsed.errors) == 3  # the first few described, all counted
    assert "'banana' is not an IP address" in parsed.errors[0]
    assert "prefix length" in parsed.errors[2]
    assert "loopback" in parse_anycast("127.0.0.1").errors[0]


@pytest.mark.parametrize(("entry", "why"), [
    ("2001:db8:100::20%eth0", "zone index"),
    ("198.51.100.20%1", "not an IP address"),
    ("fe80::1", "link-local"),
    ("169.254.1.1", "link-local"),
    ("ff02::1", "multicast"),
    ("224.0.0.1", "multicast"),
    ("::", "unspecified"),
    ("0.0.0.0", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:198.51.100.20", "IPv4-mapped"),
])
def test_addresses_that_cannot_be_anycast_service_addresses_are_rejected(entry: str, why: str) -> None:
    parsed = parse_anycast(f"198.51.100.10, {entry}")
    assert [str(a) for a in parsed.addresses] == ["198.51.100.10"]
    assert parsed.error_count == 1 and why in parsed.errors[0]


def test_at_most_the_limit_is_kept_and_the_rest_counted() -> None:
    text = " ".join(f"198.51.100.{i}" for i in range(1, 101))
    parsed = parse_anycast(text, limit=32)
    assert [str(a) for a in parsed.addresses] == [f"198.51.100.{i}" for i in range(1, 33)]
    assert parsed.excess == 68 and parsed.error_count == 0 and parsed.limit == 32


def test_an_oversized_annotation_is_not_read_and_says_how_big_it_is() -> None:
    parsed = parse_anycast("198.51.100.10 " + "x" * 60_000)
    assert parsed.addresses == () and parsed.error_count == 1
    assert "60014 bytes, over the limit of 4096" in parsed.errors[0]


def test_ten_thousand_junk_tokens_give_a_few_bounded_messages_and_a_count() -> None:
    junk = " ".join(f"{i}" + "x" * 400 for i in range(10))  # long tokens: each quote is cut
    parsed = parse_anycast(junk)
    assert parsed.error_count == 10 and len(parsed.errors) == 3
    assert all(len(error) < 120 for error in parsed.errors)
    many = parse_anycast(" ".join(["bogus"] * 600))
    assert many.error_count == 600 and many.errors == ("'bogus' is not an IP address",)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=5000) | st.binary(max_size=5000).map(lambda b: b.decode("latin-1")))
def test_any_text_gives_bounded_clear_results_never_an_exception(text: str) -> None:
    parsed = parse_anycast(text, limit=8)
    assert len(parsed.addresses) <= 8
    assert len(parsed.errors) <= 3 and len(parsed.errors) <= parsed.error_count
    assert all(error and len(error) < 200 for error in parsed.errors)
    assert parsed.addresses == parse_anycast(text, limit=8).addresses  # deterministic


@pytest.mark.parametrize("text", [None, "", "  ,, "])
def test_empty_annotation_means_no_anycast(text: str | None) -> None:
    assert parse_anycast(text).addresses == () and parse_anycast(text).errors == ()


@given(st.lists(st.ip_addresses(v=4) | st.ip_addresses(v=6), max_size=10), st.randoms())
def test_parsing_is_canonical_and_loses_nothing_usable(addresses: list[IPAddress], rnd: random.Random) -> None:
    separators = [",", " ", ", ", "\t", " ,"]
    text = "".join(str(a).upper() + rnd.choice(separators) for a in addresses)
    parsed = parse_anycast(text)
    usable = {a for a in addresses
              if not (a.is_unspecified or a.is_loopback or a.is_multicast or a.is_link_local
                      or (a.version == 6 and a.ipv4_mapped is not None))}
    assert set(parsed.addresses) == usable
    assert len(parsed.addresses) == len(usable)  # no duplicates
    assert all(str(a) == a.compressed for a in parsed.addresses)
    assert parsed.error_count == len(addresses) - sum(a in usable for a in addresses)

POOLS = (
    AnycastPool(ipaddress.ip_network("198.51.100.0/25")),
    AnycastPool(ipaddress.ip_network("198.51.100.128/25"), frozenset({"payments"})),
)


def test_address_in_an_open_pool_is_admitted() -> None:
    assert pool_rejection(ipaddress.ip_address("198.51.100.10"), "default", POOLS) is None


def test_address_outside_every_pool_is_rejected_with_the_pools_named() -> None:
    reason = pool_rejection(ipaddress.ip_address("203.0.113.1"), "default", POOLS)
    assert reason is not None and "outside the anycast pools" in reason and "198.51.100.0/25" in reason


def test_restricted_pool_admits_only_its_namespaces() -> None:
    address = ipaddress.ip_address("198.51.100.200")
    assert pool_rejection(address, "payments", POOLS) is None
    reason = pool_rejection(address, "default", POOLS)
    assert reason is not None and "'default' may not use" in reason and "payments" in reason


@pytest.mark.parametrize(("address", "what"), [
    ("198.51.100.0", "network"), ("198.51.100.127", "broadcast"), ("198.51.100.128", "network"),
])
def test_a_pools_network_and_broadcast_addresses_are_refused(address: str, what: str) -> None:
    reason = pool_rejection(ipaddress.ip_address(address), "payments", POOLS)
    assert reason is not None and f"the {what} address of pool" in reason


def test_an_ipv6_pools_subnet_router_anycast_address_is_refused_and_tiny_pools_are_all_hosts() -> None:
    pools = (AnycastPool(ipaddress.ip_network("2001:db8:100::/64")), AnycastPool(ipaddress.ip_network("192.0.2.8/31")))
    reason = pool_rejection(ipaddress.ip_address("2001:db8:100::"), "default", pools)
    assert reason is not None and "subnet-router anycast" in reason
    assert pool_rejection(ipaddress.ip_address("2001:db8:100::1"), "default", pools) is None
    assert pool_rejection(ipaddress.ip_address("192.0.2.8"), "default", pools) is None


def test_no_pools_rejects_everything() -> None:
    reason = pool_rejection(ipaddress.ip_address("198.51.100.1"), "default", ())
    assert reason is not None and "no anycastPools" in reason


def test_ready_pod_without_deletion_timestamp_is_eligible() -> None:
    assert pod_anycast_eligible(pod_body("p"))


def test_not_ready_pod_is_not_eligible() -> None:
    assert ineligibility_reason(pod_body("p", ready=False)) == "not ready"


def test_ready_but_terminating_pod_is_not_eligible() -> None:
    assert ineligibility_reason(pod_body("p", ready=True, terminating=True)) == "terminating"


def test_pod_without_status_is_not_eligible() -> None:
    assert not pod_anycast_eligible({"metadata": {"name": "p"}})


def test_the_old_ready_only_rule_keeps_a_terminating_pod_eligible() -> None:
    # Only for the lab's comparison: this is the behaviour flock exists to fix.
    assert ineligibility_reason(pod_body("p", ready=True, terminating=True), READY_ONLY) is None
    assert ineligibility_reason(pod_body("p", ready=False, terminating=True), READY_ONLY) == "not ready"


@pytest.mark.parametrize("junk", ["\x00" * 100, "\U0001f600\u200b" * 60, "'" * 300])
def test_quoted_values_stay_short_whatever_their_escapes(junk: str) -> None:
    # Found by the hypothesis test above: a cut of 64 characters of \x00 printed as 256.
    [error] = parse_anycast(junk, limit=8).errors
    assert len(error) < 200, error
