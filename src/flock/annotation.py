"""Parse the ``flock.io/anycast`` Pod annotation.

Entries are separated by commas and/or whitespace, IPv4 and IPv6 mixed:
``198.51.100.10, 2001:db8:100::10``. Each bad entry is reported on its own; the good
ones still count. Addresses come back canonical (``2001:DB8::0A`` -> ``2001:db8::a``),
deduplicated, in the order first seen.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from flock.model import IPAddress

ANNOTATION = "flock.io/anycast"

_SEPARATORS = re.compile(r"[,\s]+")


@dataclasses.dataclass(frozen=True)
class ParsedAnnotation:
    addresses: tuple[IPAddress, ...]
    errors: tuple[str, ...]  # one message per rejected entry


def parse_anycast(text: str | None) -> ParsedAnnotation:
    """Parse an annotation value (``None`` or blank: no anycast IPs, no errors)."""
    addresses: list[IPAddress] = []
    errors: list[str] = []
    for entry in _SEPARATORS.split(text or ""):
        if not entry:
            continue
        try:
            address = ipaddress.ip_address(entry)
        except ValueError:
            hint = " (a prefix length is not allowed: give the bare address)" if "/" in entry else ""
            errors.append(f"{entry!r} is not an IP address{hint}")
            continue
        problem = _unusable(address)
        if problem:
            errors.append(f"{entry!r} {problem}")
        elif address not in addresses:
            addresses.append(address)
    return ParsedAnnotation(tuple(addresses), tuple(errors))


def _unusable(address: IPAddress) -> str | None:
    """Why an address can never be an anycast service address, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "is an IPv4-mapped IPv6 address: write the IPv4 address"
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
        return "is not a unicast service address (unspecified, loopback, multicast or link-local)"
    return None
