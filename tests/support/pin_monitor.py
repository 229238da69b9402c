"""Count what the kernel announces of routes (every table), ip rules and nftables during a block.

    with watch_pinning(node) as seen:
        await table.adopt(pins)
    assert seen.writes == []          # no route, rule or nftables change at all

Two netlink sockets made inside the namespace (a thread enters it; a socket stays in the
namespace it was made in): NETLINK_ROUTE joined to the IPv4/IPv6 route and rule groups,
and NETLINK_NETFILTER joined to nftables' group, which announces every committed
ruleset change (a table, chain, rule, set or element added or deleted, and each
transaction's new generation). Both are subscribed before the block runs, read without
blocking after it (plus ``settle``), and closed in ``finally``. No thread is left running.
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

NETLINK_NETFILTER = 12
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 7, 8, 11, 19
_KINDS = {24: "new route", 25: "del route", 32: "new rule", 33: "del rule"}
# linux/netfilter/nf_tables.h, NFT_MSG_*: nftables messages are (NFNL_SUBSYS_NFTABLES << 8) | type.
_NFT = ["new table", "get table", "del table", "new chain", "get chain", "del chain", "new rule", "get rule",
        "del rule", "new set", "get set", "del set", "new element", "get element", "del element", "new gen"]


@dataclasses.dataclass
class PinChanges:
    """What :func:`watch_pinning` saw; filled in when the ``with`` block ends."""

    writes: list[str] = dataclasses.field(default_factory=list)
    """"new route", "del rule", "nft new element" ...: one per announcement."""


def _sockets(netns: str) -> tuple[socket.socket, socket.socket]:
    made: list[socket.socket] = []
    problem: list[BaseException] = []

    def run() -> None:
        try:
            enter(named(netns))
            route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            made.append(route)
            route.bind((0, 0))
            for group in (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE):
                route.setsockopt(rtnl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            nft = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            made.append(nft)
            nft.bind((0, 0))
            nft.setsockopt(rtnl.SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except BaseException as exc:
            problem.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if problem:
        for sock in made:
            sock.close()
        raise problem[0]
    return made[0], made[1]


def _drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    data = []
    while True:
        try:
            data.append(sock.recv(1 << 20))
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise AssertionError("pinning monitor overflowed: announcements were lost") from exc
            raise


@contextlib.contextmanager
def watch_pinning(netns: str, *, settle: float = 0.5) -> Iterator[PinChanges]:
    """Record route (any table), rule and nftables announcements in ``netns`` during the block."""
    route, nft = _sockets(netns)
    result = PinChanges()
    try:
        yield result
        time.sleep(settle)
        for data in _drain(route):
            for kind, *_ in rtnl.messages(data):
                if kind in _KINDS:
                    result.writes.append(_KINDS[kind])
        for data in _drain(nft):
            for kind, *_ in rtnl.messages(data):
                subsystem, message = kind >> 8, kind & 0xFF
                if subsystem == 10:  # NFNL_SUBSYS_NFTABLES
                    result.writes.append("nft " + (_NFT[message] if message < len(_NFT) else str(message)))
    finally:
        route.close()
        nft.close()
