"""Count the route changes the kernel announces in a namespace during a block.

    with watch_routes(node) as seen:
        await reconciler.reconcile()
    assert seen.changes(protocol=201) == []      # a quiet pass wrote nothing

A raw rtnetlink socket made inside the namespace (flock.lab.routewatch, which the lab
uses too) joins the IPv4 and IPv6 route multicast groups before the block runs
(bind() returns once the subscription is live, so nothing is missed at the start,
unlike ``ip monitor`` whose start-up cannot be observed). After the block and a settle
delay, everything queued on the socket is read without blocking: RTM_NEWROUTE and
RTM_DELROUTE are recorded, nothing else. No thread and no subprocess, so nothing can be
left running; the socket is closed in ``finally``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import socket
import time
from collections.abc import Iterator

from flock.lab.routewatch import Notification, notifications, route_socket


@dataclasses.dataclass
class RouteChanges:
    """What :func:`watch_routes` saw; filled in when the ``with`` block ends."""

    netns: str
    seen: list[Notification] = dataclasses.field(default_factory=list)

    def changes(self, protocol: int | None = None) -> list[Notification]:
        """The notifications, optionally only those of one rtm_protocol."""
        return [c for c in self.seen if protocol is None or c.protocol == protocol]


@contextlib.contextmanager
def watch_routes(netns: str, *, settle: float = 0.5, links: bool = False) -> Iterator[RouteChanges]:
    """Record route notifications in ``netns`` during the block (plus ``settle`` s after).

    ``links``: link deletions too (kind "link-del"), in the order the kernel made them.
    """
    sock = route_socket(netns, links=links)  # bound to the route groups: nothing from here on is missed
    result = RouteChanges(netns)
    try:
        yield result
        for data in queued(sock, settle, f"route monitor in {netns}"):
            result.seen.extend(notifications(data))
    finally:
        sock.close()


def queued(sock: socket.socket, settle: float, what: str) -> Iterator[bytes]:
    """After ``settle`` seconds, every read queued on ``sock``, without blocking. An overflow
    (notifications lost) fails the test."""
    time.sleep(settle)
    sock.setblocking(False)
    while True:
        try:
            yield sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise AssertionError(f"{what} overflowed: notifications were lost") from exc
            raise

