"""Values shared by the core and the adapters: addresses, next hops, allocations, pods.

Everything here is immutable and holds ``ipaddress`` objects, never strings.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from flock.core.annotation import ParsedAnnotation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ContainerID = NewType("ContainerID", str)
NodeName = NewType("NodeName", str)


def address_sort_key(address: IPAddress) -> tuple[int, int]:
    """Canonical order of addresses: IPv4 before IPv6, then numerically."""
    return (address.version, int(address))


def host_prefix(address: IPAddress) -> str:
    """The host route prefix for an address: ``198.51.100.10/32`` or ``2001:db8::10/128``."""
    return f"{address}/{address.max_prefixlen}"


@dataclasses.dataclass(frozen=True, order=False)
class Nexthop:
    """One next hop of an anycast route: a pod's eth0 address behind its host-side veth."""

    via: IPAddress
    dev: str

    def sort_key(self) -> tuple[int, int, str]:
        return (*address_sort_key(self.via), self.dev)

    def __str__(self) -> str:
        return f"via {self.via} dev {self.dev}"


Nexthops = tuple[Nexthop, ...]
"""Next hops of one route, always sorted by :meth:`Nexthop.sort_key` (see :func:`sorted_nexthops`)."""

RouteTable = Mapping[IPAddress, Nexthops]
"""Anycast host routes: anycast address -> sorted next hops (never empty)."""


def sorted_nexthops(nexthops: Iterable[Nexthop]) -> Nexthops:
    """Deduplicate and sort next hops into their canonical order."""
    return tuple(sorted(set(nexthops), key=Nexthop.sort_key))


class AllocationState(enum.Enum):
    """Where a container's allocation is in its life."""

    PENDING = "pending"  # CNI ADD in progress: addresses reserved, not yet routed
    COMMITTED = "committed"  # plumbing done: the reconciler may route its anycast IPs
    RELEASING = "releasing"  # CNI DEL in progress: next hops removed before the veth goes
    UNPINNING = "unpinning"
    """A pinned pod's CNI DEL, past its count of the connections it cuts: the veth is gone (or
    goes next) and the DEL answers; its pin and its slot's conntrack entries are removed after.
    The record keeps its slot, addresses and veth name from other pods until that is done (a
    start-up finishes it); it is routed no more."""


@dataclasses.dataclass(frozen=True)
class PodRef:
    """Which pod an allocation belongs to."""

    namespace: str
    name: str
    uid: str = ""  # empty when the runtime did not say; then namespace/name decide alone

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Allocation:
    """A container's durable network record, written by the CNI side, read by the reconciler."""

    container_id: ContainerID
    pod: PodRef
    host_ifname: str  # host-side veth, ``flock<8 hex>``
    pod_ips: tuple[IPAddress, ...]  # the pod's eth0 unicast addresses (one per family)
    anycast: tuple[IPAddress, ...]  # anycast addresses configured on the pod's lo
    state: AllocationState = AllocationState.PENDING
    pin_slot: int | None = None
    """Connection pinning slot (flock.core.pinning): its mark, routing table and rule. None:
    not pinned (no anycast IPs, pinning off, or every slot taken)."""

    def pod_ip(self, version: int) -> IPAddress | None:
        """The pod's unicast address of one IP family, if it has one."""
        return next((ip for ip in self.pod_ips if ip.version == version), None)


@dataclasses.dataclass(frozen=True)
class PodStatus:
    """What the reconciler needs to know of a Pod seen on the API watch."""

    ref: PodRef
    eligible: bool
    reason: str = ""  # why not eligible: "terminating", "not ready"
    anycast: frozenset[IPAddress] | None = None
    """The IPs the pod may be routed for: its annotation's, or while an entry of the annotation
    does not parse, those of its last annotation that parsed (None: not known)."""
    annotation: ParsedAnnotation | None = None
    """The annotation as written now, parsed (bounded); what is wrong with it is reported."""
    last_resort: bool = False
    """Ready and terminating, and its ``flock.io/anycast-terminating`` policy is
    ``last-resort``: a next hop only while no replica on the node is eligible."""
    policy_problem: str = ""
    """What is wrong with its ``flock.io/anycast-terminating`` annotation, if anything."""


# The gateway scheme (flock.adapters.plumbing): every host veth carries these link-local
# addresses and each pod's default routes point at them.
GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::1")
GATEWAYS: dict[int, IPAddress] = {4: GATEWAY_V4, 6: GATEWAY_V6}


VETH_PREFIX = "flock"
"""Every host veth flock makes is ``flock<8 hex>``."""


def host_ifname(container_id: str, attempt: int = 0) -> str:
    """The host-side veth of a container: ``flock`` + 8 hex chars of its id's SHA-256.

    32 bits collide now and then over a node's life: ``attempt`` > 0 derives the next
    candidate, for when another live container already owns the first.
    """
    seed = container_id if attempt == 0 else f"{container_id}#{attempt}"
    return VETH_PREFIX + hashlib.sha256(seed.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """The involved object of an Event."""

    kind: str  # "Pod" or "Node"
    name: str
    namespace: str = ""
    uid: str = ""

    def as_dict(self) -> dict[str, str]:
        ref = {"apiVersion": "v1", "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event as flock posts it."""

    involved: ObjectRef
    type: str  # "Normal" or "Warning"
    reason: str
    message: str
