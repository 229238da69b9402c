"""Kernel settings (sysctls) written through procfs, for the calling thread's netns.

procfs shows the sysctls of the network namespace of the thread that opens the file,
whichever mount it is read through, so callers run these on a thread inside the
namespace they mean (:mod:`flock.adapters.netns`). ``proc`` is where procfs is mounted:
a host's /proc in a container (config ``procPath``).

Keys are written in the slash form, ``net/ipv4/conf/flock1a2b3c4d/rp_filter``, which
sysctl(8) accepts too: interface names may contain dots, so the dotted form is ambiguous.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)


def write(key: str, value: str, proc: str = "/proc", *, missing_ok: bool = False) -> None:
    """Set ``key`` to ``value``. Raises OSError; not for a missing key if ``missing_ok``."""
    try:
        with open(f"{proc}/sys/{key}", "w") as file:
            file.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise
        logger.debug("sysctl %s does not exist here, skipped", key)


def write_each(keys: Iterable[str], value: str, proc: str = "/proc") -> list[str]:
    """Set every key to ``value``, best effort: one warning per key that could not be set."""
    warnings = []
    for key in keys:
        try:
            write(key, value, proc)
        except OSError as exc:
            warnings.append(f"set {key}={value}: {exc.strerror or exc}")
    return warnings


def set_multipath_hash_policy(proc: str = "/proc") -> list[str]:
    """Hash ECMP flows on their 5-tuple, for IPv4 and IPv6. Warnings; raises nothing.

    Policy 3 with ``fib_multipath_hash_fields=0x0037`` (addresses, protocol, ports)
    where the kernel has it (5.12+), else policy 1 (L4). Policy 1 reuses a hash the
    packet already carries (set by a local socket, kept across veths, re-rolled by
    TCP on a retransmission timeout), so a flow could change next hop mid-stream;
    the custom fields are always read from the packet (shared/notes/drain.md).
    """
    warnings = []
    for family in ("ipv4", "ipv6"):
        if not write_each([f"net/{family}/fib_multipath_hash_fields"], "0x0037", proc):
            warnings += write_each([f"net/{family}/fib_multipath_hash_policy"], "3", proc)
        else:  # no custom fields on this kernel: plain L4 hashing
            warnings += write_each([f"net/{family}/fib_multipath_hash_policy"], "1", proc)
    return warnings
