"""Entering network namespaces: setns() for the calling thread only.

flock does netlink and sysctl work inside other namespaces (the node's ``hostNetns``,
pods' sandboxes) from threads that enter them. setns() moves only the calling thread,
and sockets opened there belong to that namespace for good. pyroute2's own netns mode
forks a helper process from a multi-threaded process instead, which was seen to
deadlock intermittently.
"""

from __future__ import annotations

import ctypes
import os

NETNS_DIR = "/run/netns"  # where `ip netns add` pins named namespaces
_CLONE_NEWNET = 0x40000000


def named(netns: str) -> str:
    """The pin path of a named namespace (``ip netns add NAME``)."""
    return os.path.join(NETNS_DIR, netns)


def enter(path: str) -> None:
    """Move the calling thread (only) into the network namespace at ``path``. Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns into {path}: {os.strerror(code)}")
    finally:
        os.close(fd)
