"""The kernel diff: desired anycast routes vs the kernel's, as a minimal list of edits.

Pure: data in, data out. An empty list means the kernel already matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flock.core.model import IPAddress, Nexthops, RouteTable, address_sort_key, host_prefix


@dataclasses.dataclass(frozen=True)
class ReplaceRoute:
    """Install or change the host route for ``address`` to exactly ``nexthops``.

    ``new`` means flock has no route for the prefix yet: the kernel must create one and
    refuse if any route already holds the key. A netlink replace matches routes without
    regard to their protocol, so replacing blindly would overwrite someone else's route.
    """

    address: IPAddress
    nexthops: Nexthops
    new: bool = False

    def __str__(self) -> str:
        verb = "add" if self.new else "replace"
        return f"{verb} {host_prefix(self.address)} " + ", ".join(map(str, self.nexthops))


@dataclasses.dataclass(frozen=True)
class DeleteRoute:
    """Remove the host route for ``address`` (absent already counts as done)."""

    address: IPAddress

    def __str__(self) -> str:
        return f"delete {host_prefix(self.address)}"


RouteEdit = ReplaceRoute | DeleteRoute


def diff_routes(desired: RouteTable, current: RouteTable) -> list[RouteEdit]:
    """Edits that turn ``current`` into ``desired``: replaces first, then deletes.

    Both tables hold canonical (sorted) next hops, so equal routes compare equal and
    produce no edit. Edits come in canonical address order, for stable logs and tests.
    """
    replaces: list[RouteEdit] = [
        ReplaceRoute(address, desired[address], new=address not in current)
        for address in sorted(desired, key=address_sort_key)
        if current.get(address) != desired[address]
    ]
    deletes: list[RouteEdit] = [
        DeleteRoute(address)
        for address in sorted(current, key=address_sort_key)
        if address not in desired
    ]
    return replaces + deletes


def apply_edits(table: RouteTable, edits: Sequence[RouteEdit]) -> dict[IPAddress, Nexthops]:
    """The table after ``edits`` succeeded: how the reconciler tracks the kernel between dumps."""
    result = dict(table)
    for edit in edits:
        if isinstance(edit, ReplaceRoute):
            result[edit.address] = edit.nexthops
        else:
            result.pop(edit.address, None)
    return result
