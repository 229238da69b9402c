"""The kernel diff: desired anycast routes vs the kernel's, as a minimal list of edits.

Pure: data in, data out. An empty list means the kernel already matches.

flock's routes in the kernel come in two kinds, told apart by their rtm_protocol
(:class:`KernelRoutes`). An *advertised* route (``routeProtocol``) forwards to the pods
and BIRD, which learns it from the kernel, advertises its prefix. A *withdrawn* route
(``withdrawnRouteProtocol``) still forwards, but BIRD does not learn it, so re-tagging a
route withdraws its prefix from the fabric without a BIRD reload while packets already on
their way still land. flock deletes a withdrawn route after ``withdrawnLingerSeconds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence

from flock.core.model import IPAddress, Nexthops, RouteTable, address_sort_key, host_prefix


@dataclasses.dataclass(frozen=True)
class KernelRoutes:
    """flock's host routes in the main table, by kind; a prefix is in one of them at most."""

    advertised: RouteTable = dataclasses.field(default_factory=dict)
    """Routes of ``routeProtocol``: forwarding, and advertised by BIRD."""
    withdrawn: RouteTable = dataclasses.field(default_factory=dict)
    """Routes of ``withdrawnRouteProtocol``: still forwarding, no longer advertised."""
    unlearnable: frozenset[IPAddress] = frozenset()
    """Advertised routes BIRD cannot learn because a next hop is not ``onlink`` (written by
    an older flock, or by hand): they are written again."""
    last_resort: frozenset[IPAddress] = frozenset()
    """Advertised routes of ``lastResortRouteProtocol``: to last-resort pods, advertised
    with the AS path prepended."""
    reshape: frozenset[IPAddress] = frozenset()
    """Advertised routes written in the shape of the other ``datapath.nexthopGroups`` mode
    (a plain multipath route where a resilient next-hop group is wanted, or the reverse,
    or through a group of another bucket count): they are written again."""

    def __contains__(self, address: object) -> bool:
        return address in self.advertised or address in self.withdrawn


@dataclasses.dataclass(frozen=True)
class ReplaceRoute:
    """Install or change the advertised host route for ``address`` to exactly ``nexthops``.

    ``new`` means flock has no route for the prefix yet (of either kind): the kernel must
    create one and refuse if any route already holds the key. A netlink replace matches
    routes without regard to their protocol, so replacing blindly would overwrite someone
    else's route. A withdrawn route of flock's is replaced (so advertised again).
    """

    address: IPAddress
    nexthops: Nexthops
    new: bool = False
    last_resort: bool = False
    """Tag it ``lastResortRouteProtocol``: BIRD advertises it with the AS path prepended."""

    def __str__(self) -> str:
        verb = "add" if self.new else "replace"
        kind = " (last resort)" if self.last_resort else ""
        return f"{verb} {host_prefix(self.address)} " + ", ".join(map(str, self.nexthops)) + kind


@dataclasses.dataclass(frozen=True)
class WithdrawRoute:
    """Re-tag the advertised route for ``address`` as withdrawn, keeping its ``nexthops``.

    BIRD withdraws the prefix from its peers; the kernel keeps forwarding. A route that is
    already gone counts as withdrawn.
    """

    address: IPAddress
    nexthops: Nexthops

    def __str__(self) -> str:
        return f"withdraw {host_prefix(self.address)} " + ", ".join(map(str, self.nexthops))


@dataclasses.dataclass(frozen=True)
class DeleteRoute:
    """Remove the host route for ``address`` (absent already counts as done).

    ``withdrawn``: the withdrawn route (the usual end of a withdrawal). Otherwise the
    advertised one, which BIRD withdraws as it learns the deletion: only when a withdrawal
    could not re-tag the route.
    """

    address: IPAddress
    withdrawn: bool = False
    last_resort: bool = False
    """The advertised route to delete is a last-resort one."""

    def __str__(self) -> str:
        kind = " (withdrawn)" if self.withdrawn else " (last resort)" if self.last_resort else ""
        return f"delete {host_prefix(self.address)}{kind}"


RouteEdit = ReplaceRoute | WithdrawRoute | DeleteRoute


def diff_routes(desired: RouteTable, current: KernelRoutes, only: Collection[IPAddress] | None = None,
                last_resort: Collection[IPAddress] = frozenset()) -> list[ReplaceRoute | WithdrawRoute]:
    """Edits that make ``current`` advertise exactly ``desired``: replaces first, then withdrawals.

    Routes hold canonical (sorted) next hops, so equal routes compare equal and produce no
    edit. Edits come in canonical address order, for stable logs and tests. Withdrawn
    routes that are not wanted again are left for :func:`expired` to delete. ``only``:
    look at these addresses alone (the others are known to match), so that a pass costs
    what changed, not the whole table. ``last_resort``: the desired routes that go to
    last-resort pods.
    """
    advertised = current.advertised
    if only is None:
        wanted: Iterable[IPAddress] = desired
        unwanted: Iterable[IPAddress] = (address for address in advertised if address not in desired)
    else:
        wanted = [address for address in only if address in desired]
        unwanted = [address for address in only if address in advertised and address not in desired]
    differing = [address for address in wanted
                 if advertised.get(address) != desired[address] or address in current.unlearnable
                 or address in current.reshape
                 or (address in last_resort) != (address in current.last_resort)]
    replaces: list[ReplaceRoute | WithdrawRoute] = [
        ReplaceRoute(address, desired[address], new=address not in current, last_resort=address in last_resort)
        for address in sorted(differing, key=address_sort_key)
    ]
    withdrawals: list[ReplaceRoute | WithdrawRoute] = [
        WithdrawRoute(address, advertised[address]) for address in sorted(unwanted, key=address_sort_key)
    ]
    return replaces + withdrawals


def expired(lingering: dict[IPAddress, float], now: float) -> list[DeleteRoute]:
    """Deletes for the withdrawn routes whose linger ended by ``now`` (address -> deadline)."""
    return [DeleteRoute(address, withdrawn=True) for address in sorted(lingering, key=address_sort_key)
            if lingering[address] <= now]


def apply_edits(kernel: KernelRoutes, edits: Sequence[RouteEdit]) -> KernelRoutes:
    """The routes after ``edits`` succeeded: how the reconciler tracks the kernel between dumps."""
    advertised = dict(kernel.advertised)
    withdrawn = dict(kernel.withdrawn)
    touched = {edit.address for edit in edits}
    unlearnable = kernel.unlearnable - touched
    reshape = kernel.reshape - touched
    last_resort = set(kernel.last_resort)
    for edit in edits:
        if isinstance(edit, ReplaceRoute):
            withdrawn.pop(edit.address, None)
            advertised[edit.address] = edit.nexthops
            if edit.last_resort:
                last_resort.add(edit.address)
            else:
                last_resort.discard(edit.address)
        elif isinstance(edit, WithdrawRoute):
            advertised.pop(edit.address, None)
            last_resort.discard(edit.address)
            withdrawn[edit.address] = edit.nexthops
        elif edit.withdrawn:
            withdrawn.pop(edit.address, None)
        elif (edit.address in last_resort) == edit.last_resort:  # a delete of the other kind is a no-op
            advertised.pop(edit.address, None)
            last_resort.discard(edit.address)
    return KernelRoutes(advertised, withdrawn, unlearnable, frozenset(last_resort), reshape)
