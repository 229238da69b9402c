"""Count the next-hop object changes the kernel announces in a namespace during a block.

    with watch_nexthops(node) as seen:
        await routes.start()
    assert seen.writes == []

Like :mod:`tests.support.netlink_monitor` for routes: a raw rtnetlink socket made inside
the namespace joins RTNLGRP_NEXTHOP before the block runs; after the block and a settle
delay everything queued is read without blocking. RTM_NEWNEXTHOP and RTM_DELNEXTHOP are
recorded as ("new" | "del", id).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from flock.adapters import rtnetlink as rtnl
from flock.lab.routewatch import route_socket
from tests.support.netlink_monitor import queued


@dataclasses.dataclass
class NexthopChanges:
    netns: str
    writes: list[tuple[str, int]] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def watch_nexthops(netns: str, *, settle: float = 0.5) -> Iterator[NexthopChanges]:
    sock = route_socket(netns, nexthops=True)
    result = NexthopChanges(netns)
    try:
        yield result
        for data in queued(sock, settle, f"next-hop monitor in {netns}"):
            for kind, _flags, _seq, _pid, start, end in rtnl.messages(data):
                if kind in (rtnl.RTM_NEWNEXTHOP, rtnl.RTM_DELNEXTHOP):
                    obj = rtnl.nexthop_object(data, start, end)
                    result.writes.append(("new" if kind == rtnl.RTM_NEWNEXTHOP else "del", obj.id))
    finally:
        sock.close()
