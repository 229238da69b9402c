"""flock's errors, one small hierarchy. Each carries the data a caller acts on, besides
the message a person reads.

FlockError
├── ConfigError          the agent's configuration is invalid (start-up refuses to run)
├── StateError           a durable allocation record cannot be read or written
├── RouteError           a netlink route edit or dump failed (.edit, .errno)
├── PlumbingError        a pod's network could not be set up, checked or torn down
├── PinningError         connection pinning (nftables, rules, per-pod tables) could not be set
├── ConntrackError       the node's conntrack table could not be read (pinned connections)
├── AddressesExhausted   no free address is left in a pod CIDR (.network)
├── CniError             a CNI error result for the runtime (.code, .msg, .details)
└── BirdError            BIRD could not be driven
    ├── BirdConfigRejected  BIRD refused a rendered config; the previous one stays live
    └── BirdUnavailable     birdc could not reach BIRD's control socket in time

Adapters translate third-party errors into these once, with ``raise ... from exc``,
so callers never see pyroute2, aiofiles or subprocess errors.
"""

from __future__ import annotations

from typing import Any


class FlockError(Exception):
    """Base of every error flock raises on purpose."""


class ConfigError(FlockError):
    """The configuration is invalid; the message names the key and what is wrong."""


class StateError(FlockError):
    """A durable allocation record could not be read or written."""


class RouteError(FlockError):
    """A netlink route operation failed; the message says which route and why.

    ``edit``: the route edit that failed (None for a dump or the socket itself);
    ``errno``: the kernel's error number, when it gave one. Two failures with the same
    ``key`` are the same failure (the reconciler reports each once).
    """

    def __init__(self, message: str, *, edit: Any = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.edit = edit
        self.errno = errno

    @property
    def key(self) -> tuple[str, int | None]:
        return (str(self.edit) if self.edit is not None else str(self), self.errno)


class PlumbingError(FlockError):
    """A pod's network could not be set up, checked or torn down."""


class PinningError(FlockError):
    """Connection pinning's nftables table, rules or per-pod routes could not be read or written."""


class ConntrackError(FlockError):
    """The node's conntrack table could not be read (counting pinned connections)."""


class AddressesExhausted(FlockError):
    """No free address is left in a pod CIDR (``network``)."""

    def __init__(self, network: object) -> None:
        super().__init__(f"no free address left in {network}")
        self.network = network


class CniError(FlockError):
    """A CNI error result: the spec's ``code``, ``msg`` for a person, optional ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class BirdError(FlockError):
    """BIRD could not be reconfigured."""


class BirdConfigRejected(BirdError):
    """BIRD rejected the rendered configuration; the last good one keeps running."""


class BirdUnavailable(BirdError):
    """BIRD's control socket did not answer."""
