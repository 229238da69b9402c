"""In-memory fakes of the ports (flock.core.ports), shipped beside the real adapters.

Unit tests use them; tests/contract runs the same checks against each fake and its real
adapter, so the fakes behave like the real thing: ``FakeRoutes`` like NetlinkRoutes,
``FakeBird`` like BirdControl, ``RecordingEvents`` like EventPoster, ``FakeConnections``
like ConntrackCounter.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from flock.adapters.rtnetlink import describe_errno
from flock.core.drain import SlotEntries
from flock.core.model import Event, IPAddress, Nexthops, sorted_nexthops
from flock.core.routediff import KernelRoutes, ReplaceRoute, RouteEdit, WithdrawRoute
from flock.errors import BirdConfigRejected, BirdUnavailable, ConntrackError, RouteError


class FakeRoutes:
    """In-memory stand-in for :class:`NetlinkRoutes`, for unit tests.

    ``table`` is the "kernel"'s advertised routes and ``withdrawn`` its withdrawn ones;
    ``applied`` records every edit that succeeded, in order; ``fail`` maps an address to
    why its edits fail: a reason, or an errno the "kernel" answers (the RouteError then
    carries it, as the real one's does). ``writes`` counts attempted edits like the real
    adapter counts netlink requests.
    """

    def __init__(self, table: dict[IPAddress, Nexthops] | None = None, *,
                 withdrawn: dict[IPAddress, Nexthops] | None = None,
                 fail: dict[IPAddress, str | int] | None = None,
                 sysctl_warnings: Sequence[str] = ()) -> None:
        self.table: dict[IPAddress, Nexthops] = dict(table or {})
        self.withdrawn: dict[IPAddress, Nexthops] = dict(withdrawn or {})
        self.last_resort: set[IPAddress] = set()  # of ``table``: tagged as last-resort routes
        self.applied: list[RouteEdit] = []
        self.fail: dict[IPAddress, str | int] = dict(fail or {})
        self.sysctl_warnings = list(sysctl_warnings)
        self.hash_policy_set = False
        self.started = False
        self.closed = False
        self.dumps = 0
        self.writes = 0

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def dump(self) -> KernelRoutes:
        self.dumps += 1
        return KernelRoutes(dict(self.table), {a: h for a, h in self.withdrawn.items() if a not in self.table},
                            last_resort=frozenset(self.last_resort & self.table.keys()))

    async def apply(self, edits: Sequence[RouteEdit]) -> list[RouteError]:
        errors = []
        for edit in edits:
            self.writes += 1
            if edit.address in self.fail:
                why = self.fail[edit.address]
                if isinstance(why, int):
                    errors.append(RouteError(f"{edit}: {describe_errno(why)}", edit=edit, errno=why))
                else:
                    errors.append(RouteError(f"{edit}: {why}", edit=edit))
                continue
            if isinstance(edit, ReplaceRoute | WithdrawRoute) and not edit.nexthops:
                errors.append(RouteError(f"{edit}: no next hops (delete the route instead)", edit=edit))
                continue
            if isinstance(edit, ReplaceRoute):
                self.withdrawn.pop(edit.address, None)
                self.table[edit.address] = sorted_nexthops(edit.nexthops)
                (self.last_resort.add if edit.last_resort else self.last_resort.discard)(edit.address)
            elif isinstance(edit, WithdrawRoute):
                # A replace that never creates: a route that is gone stays gone.
                if edit.address in self.table or edit.address in self.withdrawn:
                    self.table.pop(edit.address, None)
                    self.last_resort.discard(edit.address)
                    self.withdrawn[edit.address] = sorted_nexthops(edit.nexthops)
            elif edit.withdrawn:
                self.withdrawn.pop(edit.address, None)
            elif (edit.address in self.last_resort) == edit.last_resort:  # a delete matches the protocol
                self.table.pop(edit.address, None)
                self.last_resort.discard(edit.address)
            self.applied.append(edit)
        return errors

    async def set_multipath_hash_policy(self) -> list[str]:
        self.hash_policy_set = True
        return list(self.sysctl_warnings)


class FakeBird:
    """In-memory stand-in for :class:`BirdControl` with the same outcomes, for unit tests.

    ``applied`` lists every text BIRD "was reconfigured" with. Set ``reject`` to a
    message to make the next applies raise BirdConfigRejected (nothing changes), or
    ``unavailable`` to make them raise BirdUnavailable (the "file" changes, and the same
    text is configured again on the next apply, like the real one).
    """

    def __init__(self, live: str | None = None) -> None:
        self.applied: list[str] = []
        self.reject: str | None = None
        self.unavailable = False
        self.calls = 0  # apply() calls that got past the "unchanged" shortcut
        self._file = live
        self._confirmed = live

    def live_text(self) -> str | None:
        return self._file

    async def apply(self, text: str) -> bool:
        if text == self._confirmed:
            return False
        self.calls += 1
        if self.reject is not None:
            raise BirdConfigRejected(self.reject)
        self._file = text
        if self.unavailable:
            self._confirmed = None
            raise BirdUnavailable("fake BIRD: control socket not answering")
        self._confirmed = text
        self.applied.append(text)
        return True


class RecordingEvents:
    """An EventSink that keeps Events in a list."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def post(self, event: Event) -> None:
        self.events.append(event)


class FakeConnections:
    """In-memory stand-in for :class:`~flock.adapters.conntrack.ConntrackCounter`:
    ``open`` is each slot's connections that count; ``fail`` makes every call raise.
    ``counted`` records the slots of each count."""

    def __init__(self, open_: dict[int, int] | None = None) -> None:
        self.open: dict[int, int] = dict(open_ or {})
        self.fail = False
        self.counted: list[frozenset[int]] = []
        self.forgotten: list[int] = []

    async def count(self, slots: Collection[int]) -> dict[int, int]:
        if self.fail:
            raise ConntrackError("fake conntrack: failing")
        self.counted.append(frozenset(slots))
        return {slot: self.open[slot] for slot in slots if self.open.get(slot)}

    async def snapshot(self, slot: int) -> SlotEntries:
        if self.fail:
            raise ConntrackError("fake conntrack: failing")
        self.counted.append(frozenset({slot}))
        return SlotEntries(slot, self.open.get(slot, 0), tuple(b"%d" % slot for _ in range(self.open.get(slot, 0))))

    async def delete(self, entries: SlotEntries) -> None:
        if self.fail:
            raise ConntrackError("fake conntrack: failing")
        self.forgotten.append(entries.slot)
        self.open.pop(entries.slot, None)

    async def forget(self, slot: int) -> int:
        if self.fail:
            raise ConntrackError("fake conntrack: failing")
        self.forgotten.append(slot)
        return self.open.pop(slot, 0)
