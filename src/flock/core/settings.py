"""The agent's settings: typed, validated once at start-up, unknown keys rejected.

The YAML file uses the camelCase keys of the Helm chart's values (``nodeName``,
``anycastPools``, ``bird.routerId`` ...). :func:`parse_config` turns a mapping into
:class:`AgentConfig` or raises :class:`~flock.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from collections.abc import Mapping
from typing import Any

from flock.core.annotation import MAX_ANYCAST_PER_POD_LIMIT
from flock.core.eligibility import READY_AND_NOT_TERMINATING, RULES
from flock.core.model import IPAddress, IPNetwork, NodeName
from flock.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AnycastPool:
    """An address range anycast IPs may come from, optionally limited to some namespaces."""

    cidr: IPNetwork
    namespaces: frozenset[str] | None = None  # None: every namespace may use the pool


@dataclasses.dataclass(frozen=True)
class BgpPeer:
    """An eBGP neighbour (usually a top-of-rack router)."""

    address: IPAddress
    asn: int


@dataclasses.dataclass(frozen=True)
class BirdConfig:
    """How the agent drives its BIRD."""

    config_path: pathlib.Path
    """Where the rendered bird.conf is written (atomically). Default /etc/bird/bird.conf."""
    socket: pathlib.Path
    """BIRD's control socket, used through ``birdc -s``. Default /run/bird/bird.ctl."""
    router_id: ipaddress.IPv4Address
    """BGP router id of this node's BIRD. Required."""
    asn: int
    """This node's AS number. Required."""
    peers: tuple[BgpPeer, ...]
    """eBGP peers. Default: none (nothing is advertised)."""
    template: pathlib.Path | None = None
    """A replacement top-level jinja2 template. Default: flock's own ``bird/bird.conf.j2``."""
    timeout_seconds: float = 10.0
    """Limit for one ``birdc`` or ``bird -p`` call, seconds. Default 10."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the node agent is told at start-up."""

    node_name: NodeName
    """This node's name; only its pods are watched. Default: $NODE_NAME."""
    state_dir: pathlib.Path
    """Durable allocation records live here. Default /var/lib/flock."""
    cni_socket: pathlib.Path
    """Unix socket the CNI plugin talks to. Default /run/flock/cni.sock."""
    anycast_pools: tuple[AnycastPool, ...]
    """Ranges anycast IPs may come from. Default: none (every anycast IP is rejected)."""
    bird: BirdConfig
    """BIRD settings."""
    host_netns: str | None = None
    """Do all netlink and sysctl work inside this named netns (lab, tests). Default: none."""
    pod_cidrs: tuple[IPNetwork, ...] | None = None
    """This node's pod ranges. Default: None, meaning the Node's spec.podCIDRs."""
    route_protocol: int = 201
    """rtm_protocol number tagging flock's kernel routes (1-255, not 0-4). Default 201."""
    tick_seconds: float = 2.0
    """Period of the reconcile tick, seconds. Default 2."""
    resync_seconds: float = 30.0
    """Period of a full kernel route dump that repairs drift, seconds. Default 30."""
    listen: str = "0.0.0.0:9964"
    """host:port serving /healthz and /metrics. Default 0.0.0.0:9964."""
    proc_path: str = "/proc"
    """Where procfs is mounted, for sysctl writes. In a container, a host /proc mount
    (e.g. /host/proc): runtimes mount the container's own /proc/sys read-only. Default /proc."""
    max_anycast_per_pod: int = 32
    """Most anycast IPs one pod may have (1-64); the rest of its annotation is ignored and
    reported. Default 32."""
    eligibility: str = READY_AND_NOT_TERMINATING
    """Which pods attract traffic: "ready-and-not-terminating" (default). "ready-only" is the
    old rule, kept only for the lab's comparison run; never use it in production."""


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _network(value: Any, where: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a CIDR ({exc})") from exc


def _address(value: Any, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not an IP address") from exc


def _asn(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4294967294:
        raise ConfigError(f"{where}: {value!r} is not an AS number (1-4294967294)")
    return value


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: {value!r} is not a positive number of seconds")
    return float(value)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _parse_pool(value: Any, where: str) -> AnycastPool:
    data = _mapping(value, where)
    _reject_unknown(data, {"cidr", "namespaces"}, where)
    if "cidr" not in data:
        raise ConfigError(f"{where}.cidr: required")
    namespaces = None
    if data.get("namespaces") is not None:
        items = _list(data["namespaces"], f"{where}.namespaces")
        namespaces = frozenset(_string(ns, f"{where}.namespaces") for ns in items)
    return AnycastPool(cidr=_network(data["cidr"], f"{where}.cidr"), namespaces=namespaces)


def _parse_peer(value: Any, where: str) -> BgpPeer:
    data = _mapping(value, where)
    _reject_unknown(data, {"address", "asn"}, where)
    for key in ("address", "asn"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: required")
    return BgpPeer(address=_address(data["address"], f"{where}.address"),
                   asn=_asn(data["asn"], f"{where}.asn"))


def _parse_bird(value: Any) -> BirdConfig:
    data = _mapping(value, "bird")
    known = {"configPath", "socket", "template", "routerId", "asn", "peers", "timeoutSeconds"}
    _reject_unknown(data, known, "bird")
    for key in ("routerId", "asn"):
        if key not in data:
            raise ConfigError(f"bird.{key}: required")
    router_id = _address(data["routerId"], "bird.routerId")
    if router_id.version != 4:
        raise ConfigError(f"bird.routerId: {router_id} must be an IPv4 address (BGP router id)")
    peers = tuple(_parse_peer(p, f"bird.peers[{i}]")
                  for i, p in enumerate(_list(data.get("peers", []), "bird.peers")))
    template = data.get("template")
    return BirdConfig(
        config_path=pathlib.Path(_string(data.get("configPath", "/etc/bird/bird.conf"), "bird.configPath")),
        socket=pathlib.Path(_string(data.get("socket", "/run/bird/bird.ctl"), "bird.socket")),
        router_id=router_id,
        asn=_asn(data["asn"], "bird.asn"),
        peers=peers,
        template=pathlib.Path(_string(template, "bird.template")) if template is not None else None,
        timeout_seconds=_positive(data.get("timeoutSeconds", 10.0), "bird.timeoutSeconds"),
    )


_TOP_KEYS = {
    "nodeName", "hostNetns", "stateDir", "cniSocket", "podCIDRs", "anycastPools",
    "routeProtocol", "tickSeconds", "resyncSeconds", "bird", "listen", "eligibility",
    "procPath", "maxAnycastPerPod",
}


def parse_config(data: Any, environ: Mapping[str, str]) -> AgentConfig:
    """Validate a configuration mapping (camelCase keys) into an :class:`AgentConfig`.

    Raises ConfigError naming the first bad key.
    """
    data = _mapping(data if data is not None else {}, "config")
    _reject_unknown(data, _TOP_KEYS, "config")

    node_name = data.get("nodeName") or environ.get("NODE_NAME")
    if not node_name:
        raise ConfigError("nodeName: required (set it, or the NODE_NAME environment variable)")

    protocol = data.get("routeProtocol", 201)
    # 0-4 are the kernel's own (unspec, redirect, kernel, boot, static).
    if isinstance(protocol, bool) or not isinstance(protocol, int) or not 5 <= protocol <= 255:
        raise ConfigError(f"routeProtocol: {protocol!r} must be an integer 5-255")

    pod_cidrs = None
    if data.get("podCIDRs") is not None:
        pod_cidrs = tuple(_network(c, f"podCIDRs[{i}]")
                          for i, c in enumerate(_list(data["podCIDRs"], "podCIDRs")))

    listen = _string(data.get("listen", "0.0.0.0:9964"), "listen")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen: {listen!r} is not host:port")

    if "bird" not in data:
        raise ConfigError("bird: required (routerId and asn at least)")

    eligibility = data.get("eligibility", READY_AND_NOT_TERMINATING)
    if eligibility not in RULES:
        raise ConfigError(f"eligibility: {eligibility!r} is not one of {', '.join(RULES)}")

    max_anycast = data.get("maxAnycastPerPod", 32)
    if isinstance(max_anycast, bool) or not isinstance(max_anycast, int) \
            or not 1 <= max_anycast <= MAX_ANYCAST_PER_POD_LIMIT:
        raise ConfigError(f"maxAnycastPerPod: {max_anycast!r} must be an integer 1-{MAX_ANYCAST_PER_POD_LIMIT}")

    host_netns = data.get("hostNetns")
    return AgentConfig(
        node_name=NodeName(_string(node_name, "nodeName")),
        host_netns=_string(host_netns, "hostNetns") if host_netns is not None else None,
        state_dir=pathlib.Path(_string(data.get("stateDir", "/var/lib/flock"), "stateDir")),
        cni_socket=pathlib.Path(_string(data.get("cniSocket", "/run/flock/cni.sock"), "cniSocket")),
        pod_cidrs=pod_cidrs,
        anycast_pools=tuple(_parse_pool(p, f"anycastPools[{i}]")
                            for i, p in enumerate(_list(data.get("anycastPools", []), "anycastPools"))),
        route_protocol=protocol,
        tick_seconds=_positive(data.get("tickSeconds", 2.0), "tickSeconds"),
        resync_seconds=_positive(data.get("resyncSeconds", 30.0), "resyncSeconds"),
        bird=_parse_bird(data["bird"]),
        listen=listen,
        eligibility=eligibility,
        max_anycast_per_pod=max_anycast,
        proc_path=_string(data.get("procPath", "/proc"), "procPath"),
    )
