"""Resilient next-hop groups: the kernel objects behind flock's anycast routes, and their
state as the netlink adapter (:mod:`flock.adapters.netlink`) knows it.

Why: a plain multipath route (RTA_MULTIPATH) is hash-threshold ECMP. When one of N next
hops leaves, the hash space is cut again into N-1 slices and ~1/4 of the *surviving*
pods' flows move too (measured: ``notes/drain.md``); a moved TCP connection is reset.
Connection pinning keeps tracked connections where they are; a resilient group protects
what conntrack does not see (a DNS service under NOTRACK, any untracked UDP).

What flock writes, per node (``datapath.nexthopGroups: resilient``):

- one **member** object per (gateway, device): ``ip nexthop add id M via <pod IP> dev
  flock<8 hex> onlink proto <routeProtocol>``; shared by every anycast prefix the pod
  serves;
- one **resilient group** per anycast prefix: ``ip nexthop add id G group M1/M2/… type
  resilient buckets 128 idle_timer 10 unbalanced_timer 60 proto <routeProtocol>``, changed
  **in place** (RTM_NEWNEXTHOP with NLM_F_REPLACE) when the prefix's pods change: members
  that stay keep their buckets, so a pod leaving moves only its own flows, and a pod
  joining takes only buckets that are idle (or, after the unbalanced timer, busy ones);
- the route points at the group: ``ip route add <prefix> nhid G proto <routeProtocol>``
  (``withdrawnRouteProtocol`` / ``lastResortRouteProtocol`` for a withdrawn or last-resort
  route: a re-tag keeps the group). The kernel dumps such a route with the group's next
  hops expanded, and BIRD learns it like a multipath route.

**Ids.** flock's objects carry ``nh_protocol = routeProtocol`` and ids in a range of their
own, ``routeProtocol × 10,000,000`` onwards (:func:`id_ranges`; for 201: members
2,010,000,001-2,014,999,998, groups 2,015,000,000-2,019,999,998, the last id of each
reserved for the start-up probe). flock reads, changes and deletes only objects that are
in its range *and* of its protocol; new ids skip every id the kernel holds, anyone's.

**Buckets** (``datapath.resilientBuckets``, 128): a member's share is quantised to
1/buckets (with 3 pods: 43/43/42 of 128); the count cannot change in place (the kernel
refuses), so a new count gives a prefix a new group at the next start.

**Timers.** A joining member gets buckets that were idle for ``IDLE_TIMER`` (10 s: a bucket
no packet hit for 10 s carries no live flow worth keeping), and after the group has been
unbalanced for ``UNBALANCED_TIMER`` (60 s) busy buckets too. Without an unbalanced timer a
joining pod could wait forever under steady traffic (buckets are idle per bucket, not per
flow: a busy service never idles them). With connection pinning on, forcing busy buckets
over breaks no tracked connection (its packets follow the conntrack mark, not the group);
only an untracked flow older than a minute in a moved bucket can move, and only when a
pod *joins*: a pod leaving moves no other pod's buckets, whatever the timers.

**Order** inside a batch: members, then groups, then routes; on removal the route, then
(in a second round, once the kernel confirmed the route is gone: deleting a group deletes
its routes) the group, then the members no group uses. Deleting a member takes it out of
its groups, so members are deleted only when no group of flock's holds them.

**Adoption and repair.** The adapter's full dump (start-up, every ``resyncSeconds``) reads
the next-hop objects (RTM_GETNEXTHOP) and the routes' RTA_NH_ID and rebuilds this state
from them, so a restart with nothing changed writes nothing. A device deleted under flock
(CNI DEL) makes the kernel delete its members and shrink their groups (a group left empty
goes with its route); the dump then shows the route's next hops as the kernel has them and
the reconciler's diff writes what is missing. Groups no route uses and members no group
uses are deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Final

from flock.adapters import rtnetlink as rtnl
from flock.core.model import IPAddress

RESILIENT: Final = "resilient"
MULTIPATH: Final = "multipath"
MODES: Final = (RESILIENT, MULTIPATH)

DEFAULT_BUCKETS: Final = 128
BUCKETS_RANGE: Final = range(8, 32769)
"""Allowed ``datapath.resilientBuckets`` (the kernel takes a u16)."""
IDLE_TIMER: Final = 10.0
"""Seconds a bucket must be idle before a joining member may take it."""
UNBALANCED_TIMER: Final = 60.0
"""Seconds a group may stay unbalanced before busy buckets move to a joining member."""

_IDLE_TICKS: Final = round(IDLE_TIMER * rtnl.USER_HZ)  # as the kernel reports them (clock_t)
_UNBALANCED_TICKS: Final = round(UNBALANCED_TIMER * rtnl.USER_HZ)
_SPAN: Final = 10_000_000


def id_ranges(protocol: int) -> tuple[range, range]:
    """flock's (member ids, group ids) for ``routeProtocol``; the last of each is the probe's."""
    base = protocol * _SPAN
    return range(base + 1, base + _SPAN // 2), range(base + _SPAN // 2, base + _SPAN)


Key = tuple[bytes, int]
"""A member's identity: (packed gateway, ifindex)."""


@dataclasses.dataclass(frozen=True)
class Group:
    """One resilient (or other) group of flock's, as dumped or as planned. Never changed in
    place: a group's change is a new Group, so a dump that repeats the last one can keep
    the last load's."""

    members: tuple[int, ...]
    buckets: int
    idle_timer: int  # clock_t, as the kernel reports it
    unbalanced_timer: int
    resilient: bool = True


class NexthopState:
    """flock's next-hop objects and which route uses which group, on the adapter's worker
    thread. Changed optimistically as requests are planned; :meth:`load` and :meth:`bind`
    replace it with the kernel's view after a dump (and after any refused request)."""

    def __init__(self, protocol: int, buckets: int) -> None:
        self.protocol = protocol
        self.buckets = buckets
        self.member_ids, self.group_ids = id_ranges(protocol)
        self.probe_member = self.member_ids[-1]
        self.probe_group = self.group_ids[-1]
        self.members: dict[Key, int] = {}
        self.groups: dict[int, Group] = {}
        self.routes: dict[IPAddress, tuple[int, int]] = {}
        """address -> (group id, rtm_protocol of the route pointing at it)."""
        self.bound = False
        """:meth:`bind` ran: which route uses which group is known."""
        self.litter = True
        """Some object of flock's may be unused: set by what can leave one (a dump, a route
        unbound or moved to another group, a group that lost members), cleared by
        :meth:`garbage`. Installing routes leaves none, and looking for it costs a walk
        over every group (~2.4 ms at 10,000), which a first pass would pay per batch."""
        # Every id the kernel holds, anyone's, and every id allocated since (so also every
        # id in members and groups).
        self._taken: set[int] = set()
        self._next = {False: self.member_ids.start, True: self.group_ids.start}
        self._loaded: dict[int, tuple[rtnl.NexthopObject, Group]] = {}  # the last load's groups

    def ours(self, obj: rtnl.NexthopObject) -> bool:
        return obj.protocol == self.protocol and (obj.id in self.member_ids or obj.id in self.group_ids)

    def load(self, objects: Iterable[rtnl.NexthopObject]) -> None:
        """Take the kernel's next-hop objects (an RTM_GETNEXTHOP dump) as the truth.

        A dump decodes a message it saw last time to the same object (flock.adapters.netlink),
        and such a group keeps the Group it had: a repeated dump of 10,000 groups loads in
        ~2.5 ms instead of ~4.7."""
        members: dict[Key, int] = {}
        groups: dict[int, Group] = {}
        taken: set[int] = set()
        loaded, self._loaded = self._loaded, {}
        protocol, member_ids, group_ids = self.protocol, self.member_ids, self.group_ids
        for obj in objects:
            nexthop_id = obj.id
            taken.add(nexthop_id)
            if obj.protocol != protocol:
                continue
            if nexthop_id in group_ids:
                if obj.group:
                    last = loaded.get(nexthop_id)
                    group = last[1] if last is not None and last[0] is obj else Group(
                        obj.group, obj.buckets, obj.idle_timer, obj.unbalanced_timer,
                        obj.group_type == rtnl.NEXTHOP_GRP_TYPE_RES)
                    groups[nexthop_id] = group
                    self._loaded[nexthop_id] = (obj, group)
            elif nexthop_id in member_ids and not obj.group and obj.gateway and obj.index:
                members[obj.gateway, obj.index] = nexthop_id
        self.members, self.groups, self._taken = members, groups, taken
        self.litter = True

    def bind(self, routes: Mapping[int, Mapping[IPAddress, int]]) -> None:
        """Take the routes' next-hop objects (rtm_protocol -> address -> id) as the truth.
        A route pointing at an id that is not one of flock's groups is not bound."""
        self.routes = {}
        self.bound = True
        self.litter = True
        for protocol, groups in routes.items():
            for address, group in groups.items():
                if group in self.groups:
                    self.routes[address] = (group, protocol)

    def expected(self, group: Group) -> bool:
        """Whether a group is as this config writes it (type, buckets, timers)."""
        return (group.resilient and group.buckets == self.buckets
                and group.idle_timer == _IDLE_TICKS and group.unbalanced_timer == _UNBALANCED_TICKS)

    def misshapen(self, addresses: Iterable[IPAddress], mode: str) -> set[IPAddress]:
        """Those of ``addresses`` (flock's advertised routes) written in the other mode's
        shape, or through a group this config would not write: to be written again."""
        if mode == MULTIPATH:
            return {address for address in addresses if address in self.routes}
        routes, groups, expected = self.routes, self.groups, self.expected
        misshapen = set()
        for address in addresses:
            bound = routes.get(address)
            if bound is None or not expected(groups[bound[0]]):
                misshapen.add(address)
        return misshapen

    def _allocate(self, group: bool) -> int:
        ids = self.group_ids if group else self.member_ids
        candidate = self._next[group]
        for _ in range(len(ids) - 1):
            if candidate >= ids[-1]:
                candidate = ids.start
            if candidate not in self._taken:  # which holds every id of members and groups
                self._next[group] = candidate + 1
                self._taken.add(candidate)
                return candidate
            candidate += 1
        raise OSError(f"no free next-hop id in {ids.start}-{ids[-1]}")

    def plan_replace(self, address: IPAddress, hops: list[tuple[bytes, int]], protocol: int,
                     new: bool) -> list[tuple[rtnl.Request, str]]:
        """The requests that make ``address`` route through a resilient group of ``hops``
        (gateway, ifindex), tagged ``protocol``: new members, the group (created, or
        replaced in place), the route if it does not point at the group yet. Each with
        what it writes, for error messages."""
        requests: list[tuple[rtnl.Request, str]] = []
        member_ids = []
        for gateway, index in hops:
            member = self.members.get((gateway, index))
            if member is None:
                member = self.members[gateway, index] = self._allocate(group=False)
                requests.append(((rtnl.RTM_NEWNEXTHOP, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
                                  rtnl.nexthop_request(member, self.protocol, gateway, index)),
                                 f"next-hop object {member}"))
            member_ids.append(member)
        bound = self.routes.get(address)
        group_id = bound[0] if bound is not None else None
        old = self.groups.get(group_id) if group_id is not None else None
        write_route = bound is None or bound[1] != protocol
        if old is None or old.buckets != self.buckets or not old.resilient:
            if group_id is not None:
                self.litter = True  # the route moves to a new group: the old one is unused
            group_id = self._allocate(group=True)
            flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
            write_route = True
            old = None
        else:
            assert group_id is not None
            flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
            if not set(old.members) & set(member_ids):
                # No member stays: the kernel may have deleted the group with its last
                # member's device, and the route with it.
                write_route = True
        group = Group(tuple(member_ids), self.buckets, _IDLE_TICKS, _UNBALANCED_TICKS)
        if old is not None and not set(old.members) <= set(member_ids):
            self.litter = True  # a member left the group: it may be in none now
        if old is None or not self.expected(old) or set(old.members) != set(member_ids):
            requests.append(((rtnl.RTM_NEWNEXTHOP, flags, rtnl.resilient_group_request(
                group_id, self.protocol, member_ids, buckets=self.buckets, idle_timer=IDLE_TIMER,
                unbalanced_timer=UNBALANCED_TIMER)), f"resilient group {group_id}"))
        self.groups[group_id] = group
        if write_route:
            route_flags = rtnl.NLM_F_CREATE | (rtnl.NLM_F_EXCL if new else rtnl.NLM_F_REPLACE)
            requests.append(((rtnl.RTM_NEWROUTE, route_flags,
                              rtnl.route_group_request(address.packed, protocol, group_id)), "route"))
        self.routes[address] = (group_id, protocol)
        return requests

    def retag(self, address: IPAddress, protocol: int) -> rtnl.Request | None:
        """The re-tag of ``address``'s route to ``protocol`` keeping its group (None: the
        route uses no group of flock's)."""
        bound = self.routes.get(address)
        if bound is None:
            return None
        self.routes[address] = (bound[0], protocol)
        return rtnl.RTM_NEWROUTE, rtnl.NLM_F_REPLACE, rtnl.route_group_request(address.packed, protocol, bound[0])

    def unbind(self, address: IPAddress) -> None:
        """``address``'s route is gone, or no longer uses a group: its group is garbage."""
        if self.routes.pop(address, None) is not None:
            self.litter = True

    def garbage(self) -> list[tuple[int, bool]]:
        """(id, is a group) of flock's objects nothing uses: groups first, then members
        that no remaining group holds. Empty while :attr:`litter` is not set; clears it
        (what the caller fails to delete waits for the next dump)."""
        if not self.litter:
            return []
        self.litter = False
        found = []
        used_groups = {group for group, _ in self.routes.values()}
        dead = [group for group in self.groups if group not in used_groups]
        found += [(group, True) for group in dead]
        held = {member for group_id, group in self.groups.items() if group_id not in dead
                for member in group.members}
        found += [(member, False) for member in self.members.values() if member not in held]
        return found

    def forget(self, nexthop_id: int) -> None:
        """An object was deleted (or found gone)."""
        self.groups.pop(nexthop_id, None)
        self.members = {key: member for key, member in self.members.items() if member != nexthop_id}
        self._taken.discard(nexthop_id)
