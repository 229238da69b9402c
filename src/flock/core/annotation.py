"""Parse the ``flock.io/anycast`` Pod annotation.

Entries are separated by commas and/or whitespace, IPv4 and IPv6 mixed:
``198.51.100.10, 2001:db8:100::10``. Addresses come back canonical
(``2001:DB8::0A`` -> ``2001:db8::a``), deduplicated, in the order first seen.

Anyone who may create a pod writes this value, so the parser bounds everything it
keeps and says:

- an annotation over :data:`MAX_ANNOTATION_BYTES` is not parsed at all (one error);
- at most ``limit`` addresses are kept (the agent's ``maxAnycastPerPod``); the number
  of further valid ones is counted in ``excess``;
- of the entries that are not usable, the first :data:`MAX_LISTED` are described (each
  quoted value cut to :data:`MAX_QUOTED` characters) and all are counted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from flock.core.model import IPAddress

ANNOTATION = "flock.io/anycast"

TERMINATING_ANNOTATION = "flock.io/anycast-terminating"
"""What a Ready pod that is terminating does when no replica on its node is eligible:
``last-resort`` (the default) keeps it a next hop, advertised with the AS path prepended,
so the fabric uses it only while no node has an eligible replica; ``withdraw`` takes it
out at once, like any terminating pod."""
LAST_RESORT = "last-resort"
WITHDRAW = "withdraw"

MAX_ANNOTATION_BYTES = 4096
"""Longest annotation value parsed: 64 full-length IPv6 addresses fit with room to spare."""
MAX_ANYCAST_PER_POD_LIMIT = 64
"""Highest value ``maxAnycastPerPod`` may take (so :data:`MAX_ANNOTATION_BYTES` always suffices)."""
MAX_LISTED = 3
"""How many bad entries a message describes; the rest are counted."""
MAX_QUOTED = 64
"""Longest piece of a pod-written value quoted back in a message or log line."""

_SEPARATORS = re.compile(r"[,\s]+")


def quoted(value: str) -> str:
    """``repr`` of a pod-written value, its quoted text cut to :data:`MAX_QUOTED` characters
    (escapes count: ``\\x00`` is four, so a value of control characters is cut sooner)."""
    shown = repr(value)
    if len(shown) <= MAX_QUOTED + 2:
        return shown
    cut = value[:MAX_QUOTED]
    while len(repr(cut)) > MAX_QUOTED + 2:
        cut = cut[:-1]
    return repr(cut) + f"… ({len(value)} chars)"


@dataclasses.dataclass(frozen=True)
class ParsedAnnotation:
    addresses: tuple[IPAddress, ...] = ()
    """Usable addresses, at most ``limit`` of them."""
    errors: tuple[str, ...] = ()
    """What is wrong with the first :data:`MAX_LISTED` distinct unusable entries."""
    error_count: int = 0
    """How many entries are unusable in all (``errors`` describes the first few)."""
    excess: int = 0
    """Usable addresses beyond ``limit``, left out."""
    limit: int = MAX_ANYCAST_PER_POD_LIMIT
    """The most addresses kept (the agent's ``maxAnycastPerPod``)."""


def parse_anycast(text: str | None, limit: int = MAX_ANYCAST_PER_POD_LIMIT) -> ParsedAnnotation:
    """Parse an annotation value (``None`` or blank: no anycast IPs, no errors)."""
    text = text or ""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ANNOTATION_BYTES:
        return ParsedAnnotation(errors=(f"the value is {size} bytes, over the limit of {MAX_ANNOTATION_BYTES}; "
                                        "not read at all",), error_count=1, limit=limit)
    addresses: list[IPAddress] = []
    errors: list[str] = []
    error_count = excess = 0
    for entry in _SEPARATORS.split(text):
        if not entry:
            continue
        problem = None
        address = None
        try:
            address = ipaddress.ip_address(entry)
        except ValueError:
            hint = " (a prefix length is not allowed: give the bare address)" if "/" in entry else ""
            problem = f"is not an IP address{hint}"
        if address is not None:
            problem = unusable(address)
        if problem is not None or address is None:
            error_count += 1
            message = f"{quoted(entry)} {problem}"
            if len(errors) < MAX_LISTED and message not in errors:
                errors.append(message)
        elif address not in addresses:
            if len(addresses) < limit:
                addresses.append(address)
            else:
                excess += 1
    return ParsedAnnotation(tuple(addresses), tuple(errors), error_count, excess, limit)


def unusable(address: IPAddress) -> str | None:
    """Why an address can never be an anycast service address, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return "has a zone index: an anycast IP is global, write it without %zone"
        if address.ipv4_mapped is not None:
            return "is an IPv4-mapped IPv6 address: write the IPv4 address"
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
        return "is not a unicast service address (unspecified, loopback, multicast or link-local)"
    return None


def parse_terminating(value: str | None) -> tuple[str, str]:
    """The :data:`TERMINATING_ANNOTATION` policy (``last-resort`` when absent) and, for a
    value that is neither, what is wrong (the default is used then)."""
    if value is None or value.strip() == LAST_RESORT:
        return LAST_RESORT, ""
    if value.strip() == WITHDRAW:
        return WITHDRAW, ""
    return LAST_RESORT, (f"{TERMINATING_ANNOTATION}: {quoted(value)} is neither {LAST_RESORT!r} nor "
                         f"{WITHDRAW!r}; {LAST_RESORT!r} applies")
