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
import errno
import socket
import threading
import time
from collections.abc import Iterator

from flock.adapters import rtnetlink as rtnl
from flock.adapters.netns import enter, named

_NETLINK_ADD_MEMBERSHIP = 1


@dataclasses.dataclass
class NexthopChanges:
    netns: str
    writes: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def _nexthop_socket(netns: str) -> socket.socket:
    result: dict[str, socket.socket | BaseException] = {}

    def opener() -> None:
        try:
            enter(named(netns))
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, rtnl.SO_RCVBUFFORCE, 16 << 20)
            sock.bind((0, 0))
            sock.setsockopt(rtnl.SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, rtnl.RTNLGRP_NEXTHOP)
            result["sock"] = sock
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=opener)  # ends right after: nothing stays in the netns
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


@contextlib.contextmanager
def watch_nexthops(netns: str, *, settle: float = 0.5) -> Iterator[NexthopChanges]:
    sock = _nexthop_socket(netns)
    result = NexthopChanges(netns)
    try:
        yield result
        time.sleep(settle)
        sock.setblocking(False)
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise AssertionError(f"next-hop monitor in {netns} overflowed") from exc
                raise
            for kind, _flags, _seq, _pid, start, end in rtnl.messages(data):
                if kind in (rtnl.RTM_NEWNEXTHOP, rtnl.RTM_DELNEXTHOP):
                    obj = rtnl.nexthop_object(data, start, end)
                    result.writes.append(("new" if kind == rtnl.RTM_NEWNEXTHOP else "del", obj.id))
    finally:
        sock.close()
