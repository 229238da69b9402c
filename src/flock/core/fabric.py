"""What a BGP session to the fabric carries besides prefixes: BFD, communities, passwords,
and which nodes a peer is for.

Pure values and their parsers (data in, data out; errors are
:class:`~flock.errors.ConfigError` naming the key):

- :class:`BfdSettings`: BFD (RFC 5880) timers of one session, as BIRD's ``bfd { }`` block
  of a BGP protocol takes them;
- :class:`Community`: a standard (RFC 1997, ``"65000:100"``) or large (RFC 8092,
  ``"65000:1:2"``) BGP community, written the way routers print them;
- :class:`LabelSelector`: a Kubernetes label selector (``matchLabels`` and
  ``matchExpressions``, the LabelSelector semantics of the API) matched against the Node's
  labels, so one agent config serves every node and each node keeps its own peers;
- :func:`password_problem`: what BIRD's config syntax and the kernel's TCP-MD5 can take.

Measured with BIRD 2.0.12 (``bird -p``): a quoted string has no escapes (``"a\\"b"``
ends at the backslash's quote) and cannot span lines; any other byte, backslash included,
is taken literally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flock.errors import ConfigError

FROM_NODE_IP = "fromNodeIP"
"""``sourceAddress`` placeholder: the Node's InternalIP of the peer's family (``status.addresses``)."""

MAX_PASSWORD_BYTES = 80
"""The kernel's TCP-MD5 key limit (TCP_MD5SIG_MAXKEYLEN); a longer key fails at connect time."""

STANDARD_PART = 0xFFFF
LARGE_PART = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# BFD
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BfdSettings:
    """BFD for one BGP session: BIRD's ``protocol bfd`` and ``bfd { ... }`` in the session.

    BIRD tears a BGP session down only when its BFD session goes from Up to Down, so BFD
    on towards a router that runs no BFD costs one small packet a second and changes
    nothing (measured: BGP Established, BFD session Down).
    """

    enabled: bool = True
    """Run BFD for the session. Default true (see the class docstring)."""
    interval_ms: int = 300
    """Desired transmit and required receive interval, milliseconds (10-60000). Default 300."""
    multiplier: int = 3
    """Packets missed in a row that declare the peer down (2-255). Default 3: a dead peer
    is detected in interval x multiplier, 0.9 s."""

    @property
    def detection_ms(self) -> int:
        return self.interval_ms * self.multiplier


BFD_INTERVAL_MS = (10, 60000)
BFD_MULTIPLIER = (2, 255)
_BFD_KEYS = {"enabled": "enabled", "intervalMs": "interval_ms", "multiplier": "multiplier"}


def parse_bfd(value: Any, where: str, base: BfdSettings) -> BfdSettings:
    """``{enabled?, intervalMs?, multiplier?}`` over ``base`` (keys left out keep ``base``'s)."""
    data = _mapping(value, where)
    _reject_unknown(data, set(_BFD_KEYS), where)
    enabled = data.get("enabled", base.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: {enabled!r} must be true or false")
    interval = _int_in(data.get("intervalMs", base.interval_ms), BFD_INTERVAL_MS, f"{where}.intervalMs")
    multiplier = _int_in(data.get("multiplier", base.multiplier), BFD_MULTIPLIER, f"{where}.multiplier")
    return BfdSettings(enabled=enabled, interval_ms=interval, multiplier=multiplier)


# ---------------------------------------------------------------------------
# Communities
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class Community:
    """A BGP community: standard ``(asn, value)`` or large ``(global, local1, local2)``."""

    parts: tuple[int, ...]
    """Two 16-bit numbers (standard) or three 32-bit numbers (large)."""

    @property
    def large(self) -> bool:
        return len(self.parts) == 3

    def __str__(self) -> str:
        return ":".join(map(str, self.parts))

    def bird(self) -> str:
        """BIRD's literal: ``(65000, 100)`` or ``(65000, 1, 2)``."""
        return "(" + ", ".join(map(str, self.parts)) + ")"


def parse_community(value: Any, where: str) -> Community:
    """``"65000:100"`` (standard, each part 0-65535) or ``"65000:1:2"`` (large, each part
    0-4294967295). Raises ConfigError naming ``where``."""
    if not isinstance(value, str):
        # YAML 1.1 reads an unquoted 65000:59 as a base-60 integer (3900059).
        raise ConfigError(f"{where}: {value!r} must be a quoted string such as \"65000:100\" "
                          f"(standard) or \"65000:1:2\" (large)")
    parts = value.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.isascii() and p.isdigit() for p in parts):
        raise ConfigError(f"{where}: {value!r} is not a community: \"ASN:VALUE\" (standard) or "
                          f"\"ASN:VALUE:VALUE\" (large), decimal numbers")
    numbers = tuple(int(p) for p in parts)
    limit = STANDARD_PART if len(numbers) == 2 else LARGE_PART
    if any(n > limit for n in numbers):
        kind = "a standard community's parts are 0-65535" if limit == STANDARD_PART \
            else "a large community's parts are 0-4294967295"
        raise ConfigError(f"{where}: {value!r}: {kind}")
    return Community(numbers)


def parse_communities(value: Any, where: str) -> tuple[Community, ...]:
    """A list of communities, sorted (standard first), duplicates dropped."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    found = {parse_community(item, f"{where}[{i}]") for i, item in enumerate(value)}
    return tuple(sorted(found, key=lambda c: (c.large, c.parts)))


# ---------------------------------------------------------------------------
# Node label selectors
# ---------------------------------------------------------------------------

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: str
    """In, NotIn, Exists or DoesNotExist."""
    values: tuple[str, ...] = ()
    """Sorted; empty for Exists and DoesNotExist."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":  # as Kubernetes: a node without the label matches
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; every part must match (an empty one matches every node)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    """(key, value) pairs, sorted by key."""
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(key) == value for key, value in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    def __str__(self) -> str:
        """kubectl's selector syntax: ``rack=r1,zone in (a,b),!spare``."""
        parts = [f"{key}={value}" for key, value in self.match_labels] + [str(r) for r in self.match_expressions]
        return ",".join(parts) or "(every node)"


def parse_label_selector(value: Any, where: str) -> LabelSelector:
    """``{matchLabels: {k: v}, matchExpressions: [{key, operator, values}]}``."""
    data = _mapping(value, where)
    _reject_unknown(data, {"matchLabels", "matchExpressions"}, where)
    labels = _mapping(data.get("matchLabels") or {}, f"{where}.matchLabels")
    pairs = []
    for key, label in labels.items():
        _label_key(key, f"{where}.matchLabels")
        pairs.append((key, _label_value(label, f"{where}.matchLabels.{key}")))
    expressions = data.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise ConfigError(f"{where}.matchExpressions: expected a list, got {type(expressions).__name__}")
    requirements = tuple(_requirement(item, f"{where}.matchExpressions[{i}]") for i, item in enumerate(expressions))
    return LabelSelector(match_labels=tuple(sorted(pairs)), match_expressions=requirements)


def _requirement(value: Any, where: str) -> Requirement:
    data = _mapping(value, where)
    _reject_unknown(data, {"key", "operator", "values"}, where)
    key = _label_key(data.get("key"), f"{where}.key")
    operator = data.get("operator")
    if operator not in OPERATORS:
        raise ConfigError(f"{where}.operator: {operator!r} is not one of {', '.join(OPERATORS)}")
    values = data.get("values") or []
    if not isinstance(values, list):
        raise ConfigError(f"{where}.values: expected a list, got {type(values).__name__}")
    if operator in ("In", "NotIn") and not values:
        raise ConfigError(f"{where}.values: {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ConfigError(f"{where}.values: {operator} takes no values")
    return Requirement(key=key, operator=operator,
                       values=tuple(sorted({_label_value(v, f"{where}.values") for v in values})))


def _label_key(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: label key {value!r} must be a non-empty string")
    return value


def _label_value(value: Any, where: str) -> str:
    if not isinstance(value, str):
        # Labels are strings; YAML reads an unquoted true or 1 as something else.
        raise ConfigError(f"{where}: label value {value!r} must be a string (quote it)")
    return value


# ---------------------------------------------------------------------------
# TCP-MD5 passwords
# ---------------------------------------------------------------------------


def password_problem(password: str) -> str | None:
    """Why BIRD cannot take ``password`` as a TCP-MD5 key, or None if it can.

    BIRD's quoted strings have no escapes and cannot hold a double quote or a line break;
    flock also refuses other control characters and non-ASCII text (a router on the other
    end must type the same bytes) and keys over the kernel's 80 bytes. The reason never
    quotes the password.
    """
    if not password:
        return "the password is empty"
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return (f"the password is {len(password.encode())} bytes; TCP-MD5 keys are at most "
                f"{MAX_PASSWORD_BYTES}")
    if '"' in password:
        return "the password contains a double quote, which BIRD's config syntax cannot carry"
    if any(not (" " <= ch <= "~") for ch in password):
        return ("the password contains a control character or non-ASCII text; flock takes "
                "printable ASCII only (space to ~, no double quote)")
    return None


# ---------------------------------------------------------------------------
# Small parsing helpers (settings.py has its own; this module must not import it)
# ---------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _int_in(value: Any, bounds: tuple[int, int], where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"{where}: {value!r} must be an integer {bounds[0]}-{bounds[1]}")
    return value
