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

from flock.core.annotation import ANNOTATION, MAX_LISTED, ParsedAnnotation
from flock.core.model import (
    Allocation,
    AllocationState,
    IPAddress,
    Nexthop,
    Nexthops,
    PodRef,
    PodStatus,
    sorted_nexthops,
)
from flock.core.pools import pool_rejection
from flock.core.settings import AnycastPool

REJECTED = "AnycastRejected"
FAMILY_MISMATCH = "AnycastFamilyMismatch"

KEEPS_LAST = ("until every entry parses, the pod keeps the anycast IPs of its last annotation that parsed")


@dataclasses.dataclass(frozen=True)
class Finding:
    """What is wrong with one pod's anycast IPs, for one Event reason: one Warning Event.

    Bounded whatever the pod wrote: the first :data:`MAX_LISTED` problems are described,
    the rest only counted.
    """

    pod: PodRef
    reason: str  # REJECTED or FAMILY_MISMATCH
    problems: tuple[str, ...]  # the first few, each naming its entry
    count: int  # how many problems in all
    note: str = ""  # what follows for the pod, if anything

    @property
    def message(self) -> str:
        described = "; ".join(self.problems)
        if self.count > len(self.problems):
            described += f"; and {self.count - len(self.problems)} more"
        head = described if self.count == 1 else f"{self.count} problems: {described}"
        return f"{head}. {self.note[0].upper()}{self.note[1:]}" if self.note else head


@dataclasses.dataclass(frozen=True)
class Resolution:
    routes: dict[IPAddress, Nexthops]
    """anycast IP -> sorted next hops; an IP with no eligible pod (nor last-resort pod) is absent."""
    serving: dict[PodRef, frozenset[IPAddress]]
    """which anycast IPs each pod is a next hop for."""
    findings: tuple[Finding, ...]
    last_resort: frozenset[IPAddress] = frozenset()
    """The IPs of ``routes`` that go to last-resort pods (no eligible pod on the node)."""


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


@dataclasses.dataclass(frozen=True)
class Contribution:
    """What one committed allocation adds to the node: next hops, and problems to report.

    The pure unit of resolving; the reconciler keeps each allocation's contribution and
    computes it again only when the allocation or its pod's status changed.
    """

    pod: PodRef
    hops: tuple[tuple[IPAddress, Nexthop], ...]
    """(anycast IP, this pod's next hop for it), for each IP routed to the pod."""
    problems: tuple[tuple[str, str], ...]
    """(Event reason, problem) in the order found."""
    unlisted: tuple[tuple[str, int, str], ...] = ()
    """(Event reason, how many problems not described one by one, note)."""
    fallback: tuple[tuple[IPAddress, Nexthop], ...] = ()
    """The same for a last-resort pod (Ready, terminating, policy last-resort): used only
    for IPs no eligible pod of the node serves."""


class PoolPolicy:
    """:func:`~flock.core.pools.pool_rejection` for one set of pools, each (address,
    namespace) answered once and then remembered.

    A pass that computes a pod's contribution asks for each of its IPs (20,000 questions
    for 10,000 two-pod routes at start-up). pool_rejection's own cache hashes its whole
    key, the pools included (dataclasses hashing their networks in Python), on every
    call: 20,000 questions it has all seen cost ~18 ms, ~3 ms here. (The first time, ~38
    ms either way: working the answer out is most of it.) Bounded: past ``limit``
    answers it starts again.
    """

    def __init__(self, pools: Sequence[AnycastPool], limit: int = 1 << 16) -> None:
        self.pools = tuple(pools)
        self.limit = limit
        self._answers: dict[tuple[IPAddress, str], str | None] = {}

    def rejection(self, address: IPAddress, namespace: str) -> str | None:
        """None if some pool admits ``address`` for ``namespace``, else why not."""
        key = (address, namespace)
        try:
            return self._answers[key]
        except KeyError:
            pass
        if len(self._answers) >= self.limit:
            self._answers.clear()
        answer = self._answers[key] = pool_rejection(address, namespace, self.pools)
        return answer


def contribution(allocation: Allocation, status: PodStatus | None,
                 pools: Sequence[AnycastPool] | PoolPolicy) -> Contribution | None:
    """One allocation's next hops and problems (None: not committed, so nothing yet).

    An anycast IP outside the pools, or of a family the pod has no unicast address for,
    is left out and reported (whether or not the pod is eligible right now, so a person
    hears of it early); so is every problem of the pod's annotation as written now.
    ``pools``: the pools, or a :class:`PoolPolicy` of them that remembers its answers.
    """
    if allocation.state is not AllocationState.COMMITTED:
        return None
    policy = pools if isinstance(pools, PoolPolicy) else PoolPolicy(pools)
    pod = allocation.pod
    eligible = status is not None and status.eligible
    # The annotation may change after ADD. An IP taken off it stops being routed to the
    # pod; one added to it is not on the pod's lo, so routing it would black-hole it.
    # (While an entry does not parse, the pod cache holds the last set that did.)
    listed = status.anycast if status is not None else None
    problems: list[tuple[str, str]] = []
    unlisted: list[tuple[str, int, str]] = []
    if status is not None and status.annotation is not None:
        _annotation_problems(allocation, status.annotation, policy, problems, unlisted)
    if status is not None and status.policy_problem:
        problems.append((REJECTED, status.policy_problem))
    hops: list[tuple[IPAddress, Nexthop]] = []
    fallback: list[tuple[IPAddress, Nexthop]] = []
    last_resort = status is not None and status.last_resort
    routed = eligible or last_resort
    # The pod's next hop per family, made once (the first address of the family, as
    # Allocation.pod_ip): every IP of the family routes through the same one.
    via: dict[int, Nexthop] = {}
    for ip in reversed(allocation.pod_ips):
        via[ip.version] = Nexthop(via=ip, dev=allocation.host_ifname)
    namespace = pod.namespace
    for address in allocation.anycast:
        rejection = policy.rejection(address, namespace)
        if rejection:
            problems.append((REJECTED, rejection))
            continue
        hop = via.get(address.version)
        if hop is None:
            problems.append((FAMILY_MISMATCH,
                             f"{address} skipped: the pod has no IPv{address.version} address to route it to"))
            continue
        if routed and (listed is None or address in listed):
            (hops if eligible else fallback).append((address, hop))
    return Contribution(pod, tuple(hops), tuple(problems), tuple(unlisted), tuple(fallback))


class DesiredRoutes:
    """The desired routes of a set of contributions, kept up to date one contribution at a
    time: a change costs the addresses it touches, not the node's whole table (10,000
    routes take ~40 ms to combine from scratch).

    ``routes`` and ``last_resort`` are what :func:`combine` gives for the contributions
    added and not removed: an address goes to its eligible pods, or, with none, to its
    last-resort pods (and is then in ``last_resort``).
    """

    def __init__(self) -> None:
        self.routes: dict[IPAddress, Nexthops] = {}
        self.last_resort: set[IPAddress] = set()
        # address -> next hop -> how many contributions give it (a count: two allocations
        # may give the same next hop, and removing one must keep it); eligible and last-resort
        self._hops: dict[IPAddress, dict[Nexthop, int]] = {}
        self._fallback: dict[IPAddress, dict[Nexthop, int]] = {}
        self._touched: set[IPAddress] = set()  # by updates not yet settled

    def replace(self, old: Contribution | None, new: Contribution | None) -> set[IPAddress]:
        """Take ``old`` out and put ``new`` in; return the addresses whose route changed
        (next hops, or whether it is a last resort)."""
        self.update(old, new)
        return self.settle()

    def update(self, old: Contribution | None, new: Contribution | None) -> None:
        """:meth:`replace` without working out the routes yet: many updates, then one
        :meth:`settle` (an address two pods serve is sorted once, not twice)."""
        for layer, before, after in (
                (self._hops, old.hops if old is not None else (), new.hops if new is not None else ()),
                (self._fallback, old.fallback if old is not None else (), new.fallback if new is not None else ())):
            if before != after:
                _count(layer, before, after, self._touched)

    def settle(self) -> set[IPAddress]:
        """Work out the routes the updates since the last call touched; return the addresses
        whose route changed."""
        touched, self._touched = self._touched, set()
        changed = set()
        for address in touched:
            hops = self._hops.get(address) or self._fallback.get(address)
            route = sorted_nexthops(hops) if hops else None
            last_resort = route is not None and not self._hops.get(address)
            if self.routes.get(address) == route and (address in self.last_resort) == last_resort:
                continue
            changed.add(address)
            if route is None:
                del self.routes[address]
            else:
                self.routes[address] = route
            if last_resort:
                self.last_resort.add(address)
            else:
                self.last_resort.discard(address)
        return changed


def _count(layer: dict[IPAddress, dict[Nexthop, int]], before: Iterable[tuple[IPAddress, Nexthop]],
           after: Iterable[tuple[IPAddress, Nexthop]], touched: set[IPAddress]) -> None:
    for address, hop in before:
        counts = layer[address]
        counts[hop] -= 1
        if not counts[hop]:
            del counts[hop]
            if not counts:
                del layer[address]
        touched.add(address)
    for address, hop in after:
        counts = layer.setdefault(address, {})
        counts[hop] = counts.get(hop, 0) + 1
        touched.add(address)


def findings(contributions: Iterable[Contribution]) -> tuple[Finding, ...]:
    """One Finding per pod and reason, from the contributions' problems."""
    problems = _Problems()
    for part in contributions:
        for reason, problem in part.problems:
            problems.add(part.pod, reason, problem)
        for reason, count, note in part.unlisted:
            problems.count_more(part.pod, reason, count, note)
    return problems.findings()


def combine(contributions: Iterable[Contribution]) -> Resolution:
    """The node's desired routes, who serves what, and one Finding per pod and reason."""
    parts = list(contributions)
    desired = DesiredRoutes()
    serving: dict[PodRef, set[IPAddress]] = defaultdict(set)
    for part in parts:
        desired.update(None, part)
        serving[part.pod].update(address for address, _ in part.hops + part.fallback)
    desired.settle()
    return Resolution(
        routes=desired.routes,
        serving={pod: frozenset(addresses) for pod, addresses in serving.items() if addresses},
        findings=findings(parts),
        last_resort=frozenset(desired.last_resort),
    )


def resolve(
    allocations: Iterable[Allocation],
    pods: Mapping[tuple[str, str], PodStatus],
    pools: Sequence[AnycastPool],
) -> Resolution:
    """Desired anycast routes from committed allocations and the pods' eligibility."""
    policy = PoolPolicy(pools)
    parts = (contribution(allocation, matching_status(allocation, pods), policy) for allocation in allocations)
    return combine(part for part in parts if part is not None)


class _Problems:
    """Problems per (pod, Event reason), in the order found, each counted once."""

    def __init__(self) -> None:
        self._found: dict[tuple[PodRef, str], dict[str, None]] = {}
        self._unlisted: dict[tuple[PodRef, str], int] = defaultdict(int)
        self._notes: dict[tuple[PodRef, str], str] = {}

    def add(self, pod: PodRef, reason: str, problem: str) -> None:
        self._found.setdefault((pod, reason), {})[problem] = None

    def count_more(self, pod: PodRef, reason: str, count: int, note: str = "") -> None:
        """``count`` further problems that are not described one by one (and a note, if any)."""
        self._found.setdefault((pod, reason), {})
        self._unlisted[pod, reason] = max(self._unlisted[pod, reason], count)
        if note:
            self._notes[pod, reason] = note

    def findings(self) -> tuple[Finding, ...]:
        found = [Finding(pod, reason, tuple(list(problems)[:MAX_LISTED]),
                         len(problems) + self._unlisted[pod, reason], self._notes.get((pod, reason), ""))
                 for (pod, reason), problems in self._found.items()]
        return tuple(sorted(found, key=lambda f: (f.pod.namespace, f.pod.name, f.reason)))


def _annotation_problems(allocation: Allocation, annotation: ParsedAnnotation, policy: PoolPolicy,
                         problems: list[tuple[str, str]], unlisted: list[tuple[str, int, str]]) -> None:
    """What the pod's annotation, as written now, asks for that its network cannot have, and why."""
    pod = allocation.pod
    for error in annotation.errors:
        problems.append((REJECTED, f"{ANNOTATION}: {error}"))
    if annotation.error_count:
        unlisted.append((REJECTED, annotation.error_count - len(annotation.errors), KEEPS_LAST))
    if annotation.excess:
        problems.append((REJECTED, f"{annotation.excess} anycast IP{'s' if annotation.excess != 1 else ''} "
                         f"beyond the limit of {annotation.limit} per pod left out (maxAnycastPerPod)"))
    # Every address as written now, also while another entry does not parse: a hijack
    # attempt next to a typo must be heard of.
    on_pod = set(allocation.anycast)
    for address in annotation.addresses:
        if address in on_pod:
            continue
        rejection = policy.rejection(address, pod.namespace)
        if rejection:
            problems.append((REJECTED, f"{rejection}; not configured on the pod"))
        else:
            problems.append((REJECTED, f"{address} not routed: added to {ANNOTATION} after the pod's network "
                             "was set up, so it is not on the pod's lo; it takes effect when the pod is recreated"))
