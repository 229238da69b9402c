"""flock's errors, one small hierarchy.

FlockError
├── ConfigError         the agent's configuration is invalid (start-up refuses to run)
├── StateError          a durable allocation record cannot be read or written
├── RouteError          a netlink route edit or dump failed (message names route and errno)
└── BirdError           BIRD could not be driven
    ├── BirdConfigRejected  BIRD refused a rendered config; the previous one stays live
    └── BirdUnavailable     birdc could not reach BIRD's control socket in time

Adapters translate third-party errors into these once, with ``raise ... from exc``,
so callers never see pyroute2, aiofiles or subprocess errors.
"""


class FlockError(Exception):
    """Base of every error flock raises on purpose."""


class ConfigError(FlockError):
    """The configuration is invalid; the message names the key and what is wrong."""


class StateError(FlockError):
    """A durable allocation record could not be read or written."""


class RouteError(FlockError):
    """A netlink route operation failed; the message says which route and why."""


class BirdError(FlockError):
    """BIRD could not be reconfigured."""


class BirdConfigRejected(BirdError):
    """BIRD rejected the rendered configuration; the last good one keeps running."""


class BirdUnavailable(BirdError):
    """BIRD's control socket did not answer."""
