"""The resolver: committed allocations × eligible pods -> anycast host routes.

For every anycast IP of every committed allocation whose pod is eligible, whose
annotation still lists it and whose address passes the pool policy, the route gets one
next hop: the pod's eth0 address of the same family, on its host-side veth. Next hops
are sorted (see model.sorted_nexthops), so the same inputs in any order give equal
output, and a quiet pass diffs to nothing.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from flock.annotation import ANNOTATION
from flock.config import AnycastPool
from flock.model import (
    Allocation,
    AllocationState,
    IPAddress,
    Nexthop,
    Nexthops,
    PodRef,
    PodStatus,
    address_sort_key,
    sorted_nexthops,
)
from flock.pools import pool_rejection

REJECTED = "AnycastRejected"
FAMILY_MISMATCH = "AnycastFamilyMismatch"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A pod's anycast IP that cannot be routed, and why (becomes a Warning Event)."""

    pod: PodRef
    address: IPAddress | None  # None: an annotation entry that is not an address
    reason: str  # REJECTED or FAMILY_MISMATCH
    message: str


@dataclasses.dataclass(frozen=True)
class Resolution:
    routes: dict[IPAddress, Nexthops]
    """anycast IP -> sorted next hops; an IP with no eligible pod is absent."""
    serving: dict[PodRef, frozenset[IPAddress]]
    """which anycast IPs each pod is a next hop for."""
    findings: tuple[Finding, ...]


def pod_key(ref: PodRef) -> tuple[str, str]:
    return (ref.namespace, ref.name)


def matching_status(allocation: Allocation, pods: Mapping[tuple[str, str], PodStatus]) -> PodStatus | None:
    """The watched pod an allocation belongs to, or None (unknown pod, or another incarnation)."""
    status = pods.get(pod_key(allocation.pod))
    if status is None:
        return None
    if allocation.pod.uid and status.ref.uid and allocation.pod.uid != status.ref.uid:
        return None
    return status


def resolve(
    allocations: Iterable[Allocation],
    pods: Mapping[tuple[str, str], PodStatus],
    pools: Sequence[AnycastPool],
) -> Resolution:
    """Desired anycast routes from committed allocations and the pods' eligibility.

    Pending allocations are skipped. An anycast IP outside the pools, or of a family
    the pod has no unicast address for, is left out and reported as a Finding
    (whether or not the pod is eligible right now, so a person hears of it early).
    """
    nexthops: dict[IPAddress, set[Nexthop]] = defaultdict(set)
    serving: dict[PodRef, set[IPAddress]] = defaultdict(set)
    findings: list[Finding] = []
    for allocation in allocations:
        if allocation.state is not AllocationState.COMMITTED:
            continue
        status = matching_status(allocation, pods)
        eligible = status is not None and status.eligible
        # The annotation may change after ADD. An IP taken off it stops being routed to the
        # pod; one added to it is not on the pod's lo, so routing it would black-hole it.
        # (While an entry does not parse, the pod cache holds the last set that did.)
        listed = status.anycast if status is not None else None
        if status is not None:
            findings.extend(_annotation_findings(allocation, status, pools))
        for address in allocation.anycast:
            rejection = pool_rejection(address, allocation.pod.namespace, pools)
            if rejection:
                findings.append(Finding(allocation.pod, address, REJECTED, rejection))
                continue
            via = allocation.pod_ip(address.version)
            if via is None:
                findings.append(Finding(
                    allocation.pod, address, FAMILY_MISMATCH,
                    f"{address} skipped: the pod has no IPv{address.version} address to route it to",
                ))
                continue
            if eligible and (listed is None or address in listed):
                nexthops[address].add(Nexthop(via=via, dev=allocation.host_ifname))
                serving[allocation.pod].add(address)
    return Resolution(
        routes={address: sorted_nexthops(hops) for address, hops in nexthops.items()},
        serving={pod: frozenset(addresses) for pod, addresses in serving.items()},
        findings=tuple(sorted(set(findings), key=_finding_order)),
    )


def _annotation_findings(allocation: Allocation, status: PodStatus, pools: Sequence[AnycastPool]) -> list[Finding]:
    """What the pod's annotation asks for that its network does not have, and why."""
    pod = allocation.pod
    findings = [Finding(pod, None, REJECTED, f"{error}; the pod keeps the anycast IPs of its last annotation that "
                        "parsed until every entry does") for error in status.annotation_errors]
    for address in (status.anycast or frozenset()) - set(allocation.anycast):
        rejection = pool_rejection(address, pod.namespace, pools)
        if rejection:
            findings.append(Finding(pod, address, REJECTED, f"{rejection}; not configured on the pod"))
        else:
            findings.append(Finding(pod, address, REJECTED,
                                    f"{address} not routed: added to {ANNOTATION} after the pod's network was set "
                                    "up, so it is not on the pod's lo; it takes effect when the pod is recreated"))
    return findings


def _finding_order(finding: Finding) -> tuple[str, str, int, int, str, str]:
    where = address_sort_key(finding.address) if finding.address is not None else (0, -1)
    return (finding.pod.namespace, finding.pod.name, *where, finding.reason, finding.message)
