"""The ports: every interface the reconciler and the CNI server need from the world.

Each is implemented by an adapter (flock.adapters) in production and by an in-memory
fake (flock.testing) in unit tests; the contract tests (tests/contract) run the same
checks against both, so a fake cannot drift from the real thing. The agent (the
composition root) passes every one of them explicitly: none has a "do nothing" default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

from flock.core.drain import SlotCounts, SlotEntries
from flock.core.model import Allocation, ContainerID, Event, IPAddress
from flock.core.pinning import PinAdoption, PodPin
from flock.core.routediff import KernelRoutes, RouteEdit
from flock.errors import RouteError


class Routes(Protocol):
    """flock's anycast host routes in the node's kernel (flock.adapters.netlink.NetlinkRoutes)."""

    async def dump(self) -> KernelRoutes:
        """Every route of flock's two protocols in the main table, next hops sorted. Raises RouteError."""

    async def apply(self, edits: Sequence[RouteEdit]) -> list[RouteError]:
        """Apply the edits in order; one RouteError per edit that failed (the others still land)."""


class Bird(Protocol):
    """The node's BIRD (flock.adapters.bird.BirdControl)."""

    async def apply(self, text: str) -> bool:
        """Make ``text`` BIRD's running config. True if BIRD was reconfigured, False if it
        already ran it. Raises BirdConfigRejected (the old config stays live) or BirdUnavailable."""


RenderBird = Callable[[], str]
"""The node's bird.conf (raises BirdConfigRejected if a template fails)."""


class EventSink(Protocol):
    """Where Kubernetes Events go (flock.adapters.kube.EventPoster)."""

    def post(self, event: Event) -> None:
        """Queue an Event for posting; never blocks, never raises."""


class Allocations(Protocol):
    """The durable allocation records (flock.adapters.store.AllocationStore), cached in memory."""

    def all(self) -> list[Allocation]: ...

    def get(self, container_id: ContainerID) -> Allocation | None: ...

    async def put(self, allocation: Allocation) -> None:
        """Write a record durably (create or replace). Raises StateError."""

    async def commit(self, container_id: ContainerID, anycast: tuple[IPAddress, ...]) -> Allocation:
        """Mark a pending record committed with its final anycast list. Raises StateError."""

    async def remove(self, container_id: ContainerID) -> Allocation | None:
        """Delete a record (absent is fine); returns what was removed. Raises StateError."""


@dataclasses.dataclass(frozen=True)
class PlumbedPod:
    """What a pod's ADD result reports of the veth pair."""

    host_mac: str
    pod_mac: str


class PodNetworks(Protocol):
    """Pods' veths, addresses and routes (flock.adapters.plumbing.PodNetwork)."""

    async def add(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                  anycast: Sequence[IPAddress]) -> PlumbedPod:
        """Plumb a pod. Leaves none of the addresses it added behind on failure. Raises PlumbingError."""

    async def netns_exists(self, path: str) -> bool:
        """Whether a network namespace file (CNI_NETNS) exists."""

    async def pod_ifname(self, *, host_ifname: str, pod_netns: str) -> str | None:
        """The pod-side name of the veth whose host side is ``host_ifname``, if it exists."""

    async def delete(self, host_ifname: str) -> bool:
        """Remove the veth pair (its routes go with it); False if it was gone. Raises PlumbingError."""

    async def check(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                    anycast: Sequence[IPAddress]) -> list[str]:
        """What differs from what ADD set up (empty: nothing). Raises PlumbingError."""


class Pinning(Protocol):
    """Connection pinning in the node's kernel (flock.adapters.pinning.PinningTable):
    flock's nftables table, its rules and per-pod routing tables."""

    @property
    def slots(self) -> int:
        """How many pods can be pinned at once; 0 when pinning is off."""

    async def kernel_slots(self) -> dict[str, int]:
        """veth -> slot, as the kernel's nftables map holds them now. Raises PinningError."""

    async def adopt(self, pins: Sequence[PodPin]) -> PinAdoption:
        """Make the kernel hold exactly ``pins`` (the table too); write only what differs,
        remove what no pin needs. Raises PinningError."""

    async def pin(self, pin: PodPin) -> None:
        """Steer the pod's connections to it (routes, rules, then the map element);
        idempotent. Raises PinningError."""

    async def unpin(self, pin: PodPin) -> None:
        """Remove the pod's element, rules and routes (what is gone already is fine).
        Raises PinningError."""


class PinnedConnections(Protocol):
    """Pinned connections in the node's conntrack table (flock.adapters.conntrack.ConntrackCounter)."""

    async def count(self, slots: Collection[int]) -> SlotCounts:
        """Per slot of ``slots``, its connections that count (flock.core.drain.counts); a slot
        with none may be absent. Raises ConntrackError."""

    async def snapshot(self, slot: int) -> SlotEntries:
        """The slot's conntrack entries now (one dump): how many count, and what deletes
        them (:meth:`delete`). Raises ConntrackError."""

    async def delete(self, entries: SlotEntries) -> None:
        """Delete the entries of a :meth:`snapshot` without another dump (those gone
        meanwhile are fine). Raises ConntrackError."""

    async def forget(self, slot: int) -> int:
        """Delete the slot's conntrack entries (its pod's network is gone, so a pod that gets
        the slot later starts with none); return how many were connections that counted.
        Raises ConntrackError."""


class DrainReport(Protocol):
    """What a CNI DEL tells about a pinned pod's connections (flock.drainwatch.DrainWatch)."""

    async def network_removing(self, allocation: Allocation) -> SlotEntries | None:
        """The pod's veth goes next: report the pinned connections still open (cut), or the
        end of its drain, and return its slot's entries as found then (for
        :meth:`network_removed`; None: they must be looked up again). Never raises."""

    async def network_removed(self, allocation: Allocation, entries: SlotEntries | None) -> None:
        """The pod's veth and pin are gone: delete its slot's conntrack entries (``entries``,
        or all the slot has now when None). Never raises."""


PodLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""(namespace, name) -> the Pod as the API server returns it, None if it does not exist."""


class NexthopRelease(Protocol):
    """May this pod's veth be deleted now? (implemented by the reconciler)

    Deleting a veth that is one next hop of an IPv4 multipath route makes the kernel drop
    the whole route, and every other replica's traffic with it: a CNI DEL first asks the
    reconciler to take the pod out of its routes.
    """

    def shares_route(self, dev: str) -> bool:
        """Whether ``dev`` and a pod that stays are next hops of one route of flock's."""

    async def release(self, dev: str) -> bool:
        """Wait until no route shares ``dev`` with a pod that stays. False: passes do not
        run (yet), try again later."""
