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
from flock.core.daisychain import MAX_HOPS_LIMIT, DaisyChainConfig
from flock.core.eligibility import READY_AND_NOT_TERMINATING, RULES
from flock.core.fabric import (
    FROM_NODE_IP,
    BfdSettings,
    Community,
    LabelSelector,
    parse_bfd,
    parse_communities,
    parse_label_selector,
)
from flock.core.model import IPAddress, IPNetwork, NodeName
from flock.core.pinning import DEFAULT_MARK_MASK, mask_problem
from flock.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AnycastPool:
    """An address range anycast IPs may come from, optionally limited to some namespaces."""

    cidr: IPNetwork
    """The range; an anycast IP is a host route inside it."""
    namespaces: frozenset[str] | None = None
    """Only pods of these namespaces may use the pool. Default: None, every namespace."""
    communities: tuple[Community, ...] = ()
    """BGP communities (standard and large) attached to every prefix advertised from this
    pool. Default: none."""


@dataclasses.dataclass(frozen=True)
class BgpPeer:
    """An eBGP neighbour (usually a top-of-rack router)."""

    address: IPAddress
    """The peer's address; one session per address (and so per family)."""
    asn: int
    """The peer's AS number (eBGP)."""
    bfd: BfdSettings = dataclasses.field(default_factory=BfdSettings)
    """BFD for this session: ``bird.bfd`` with this peer's own ``bfd`` keys over it."""
    password_file: pathlib.Path | None = None
    """A file holding the session's TCP-MD5 password (one trailing newline is ignored),
    read once at start-up. Default: none, no password."""
    password: str | None = dataclasses.field(default=None, repr=False)
    """The password read from ``password_file`` (:func:`flock.adapters.configfile.read_passwords`);
    it goes into bird.conf only, never into a log line, an Event or an error message."""
    multihop: int | None = None
    """eBGP multihop TTL (1-255); ``multihop: true`` in the file is 64. Default: None, a
    directly connected neighbour."""
    source_address: IPAddress | str | None = None
    """Local address of the session: an address, or ``fromNodeIP`` (the Node's InternalIP of
    the peer's family). Default: None, chosen by the kernel's routing."""
    port: int = 179
    """The peer's TCP port. Default 179."""
    node_selector: LabelSelector | None = None
    """Only nodes whose labels match have this peer. Default: None, every node."""


@dataclasses.dataclass(frozen=True)
class BirdConfig:
    """How the agent drives its BIRD."""

    router_id: ipaddress.IPv4Address
    """BGP router id of this node's BIRD. Required."""
    asn: int
    """This node's AS number. Required."""
    config_path: pathlib.Path = pathlib.Path("/etc/bird/bird.conf")
    """Where the rendered bird.conf is written (atomically). Default /etc/bird/bird.conf."""
    socket: pathlib.Path = pathlib.Path("/run/bird/bird.ctl")
    """BIRD's control socket, used through ``birdc -s``. Default /run/bird/bird.ctl."""
    peers: tuple[BgpPeer, ...] = ()
    """eBGP peers, in the file's order. Default: none (nothing is advertised)."""
    bfd: BfdSettings = dataclasses.field(default_factory=BfdSettings)
    """BFD defaults of every peer (a peer's own ``bfd`` overrides any key). Default: on,
    300 ms x 3."""
    template: pathlib.Path | None = None
    """A replacement top-level jinja2 template. Default: flock's own ``bird/bird.conf.j2``."""
    timeout_seconds: float = 10.0
    """Limit for one ``birdc`` or ``bird -p`` call, seconds. Default 10."""


@dataclasses.dataclass(frozen=True)
class DatapathConfig:
    """How the node forwards to its pods (the ``datapath`` key)."""

    connection_pinning: bool = True
    """Keep each connection on the pod it started on, through next-hop changes (conntrack
    mark, per-pod table: README "Connection pinning"). Default true."""
    mark_mask: int = DEFAULT_MARK_MASK
    """Packet and conntrack mark bits flock may use for pinning: 4-12 contiguous bits, clear
    of kube-proxy's 0xc000. Default 0x0ff00000 (255 pinned pods per node)."""
    nexthop_groups: str = "resilient"
    """How a prefix's next hops are written: "resilient" (a resilient next-hop group per
    prefix, changed in place: a pod joining or leaving moves no other pod's flows; falls
    back to multipath where the kernel lacks them) or "multipath" (a plain RTA_MULTIPATH
    route). README "Resilient next-hop groups". Default resilient."""
    resilient_buckets: int = 128
    """Buckets of each resilient group (8-32768): a pod's share of the flows is quantised
    to 1/buckets. Default 128."""
    daisy_chain: DaisyChainConfig = dataclasses.field(default_factory=DaisyChainConfig)
    """Forwarding of mid-flow packets the fabric moved to a node that does not own them
    (README "Daisy chaining"). On only with connectionPinning."""

    @property
    def chaining(self) -> bool:
        """Whether daisy chaining runs: it needs pinning, which says who owns a flow."""
        return self.connection_pinning and self.daisy_chain.enabled


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the node agent is told at start-up."""

    node_name: NodeName
    """This node's name; only its pods are watched. Default: $NODE_NAME."""
    bird: BirdConfig
    """BIRD settings."""
    state_dir: pathlib.Path = pathlib.Path("/var/lib/flock")
    """Durable allocation records live here. Default /var/lib/flock."""
    cni_socket: pathlib.Path = pathlib.Path("/run/flock/cni.sock")
    """Unix socket the CNI plugin talks to. Default /run/flock/cni.sock."""
    anycast_pools: tuple[AnycastPool, ...] = ()
    """Ranges anycast IPs may come from. Default: none (every anycast IP is rejected)."""
    host_netns: str | None = None
    """Do all netlink and sysctl work inside this named netns (lab, tests). Default: none."""
    pod_cidrs: tuple[IPNetwork, ...] | None = None
    """This node's pod ranges. Default: None, meaning the Node's spec.podCIDRs."""
    pod_cidr_communities: tuple[Community, ...] = ()
    """BGP communities attached to the pod CIDRs this node advertises. Default: none."""
    route_protocol: int = 201
    """rtm_protocol number tagging flock's kernel routes, which BIRD learns and advertises
    (5-255 but 12: 0-4 are the kernel's own, 12 is BIRD's). Default 201."""
    withdrawn_route_protocol: int = 0
    """rtm_protocol number of a withdrawn route that still forwards for
    ``withdrawn_linger_seconds`` (BIRD does not learn it). Default (0 here):
    :func:`default_withdrawn_protocol` of ``route_protocol``, 202 for 201."""
    last_resort_route_protocol: int = 0
    """rtm_protocol number of a route to last-resort pods (Ready, terminating, their
    ``flock.io/anycast-terminating`` policy ``last-resort``), which BIRD advertises with
    the AS path prepended. Default (0 here): the next free number after
    ``withdrawn_route_protocol`` (203 for 201)."""
    last_resort_prepend: int = 3
    """How many times a last-resort route's AS path is prepended with the node's AS (1-16),
    so that the fabric prefers any node with an eligible replica. Default 3."""
    withdrawn_linger_seconds: float = 2.0
    """How long a withdrawn prefix keeps forwarding to its last pods after BIRD withdrew it,
    so packets the fabric sent before it converged still land. 0.1-60 s. Default 2."""
    tick_seconds: float = 2.0
    """Period of the reconcile tick, seconds. Default 2."""
    resync_seconds: float = 30.0
    """Period of a full kernel route dump that repairs drift, seconds. Default 30."""
    listen: str = "0.0.0.0:9964"
    """host:port serving /healthz, /readyz and /metrics (see :func:`listen_address`). Default 0.0.0.0:9964."""
    proc_path: str = "/proc"
    """Where procfs is mounted, for sysctl writes. In a container, a host /proc mount
    (e.g. /host/proc): runtimes mount the container's own /proc/sys read-only. Default /proc."""
    max_anycast_per_pod: int = 32
    """Most anycast IPs one pod may have (1-64); the rest of its annotation is ignored and
    reported. Default 32."""
    datapath: DatapathConfig = DatapathConfig()
    """Forwarding features (connection pinning). Default: :class:`DatapathConfig`'s defaults."""
    eligibility: str = READY_AND_NOT_TERMINATING
    """Which pods attract traffic: "ready-and-not-terminating" (default). "ready-only" is the
    old rule, kept only for the lab's comparison run; never use it in production."""

    def __post_init__(self) -> None:
        if not self.withdrawn_route_protocol:
            object.__setattr__(self, "withdrawn_route_protocol", default_withdrawn_protocol(self.route_protocol))
        if not self.last_resort_route_protocol:
            object.__setattr__(self, "last_resort_route_protocol", default_last_resort_protocol(
                self.route_protocol, self.withdrawn_route_protocol))


NEXTHOP_GROUP_MODES = ("resilient", "multipath")
"""``datapath.nexthopGroups`` values."""

ROUTE_PROTOCOLS = range(5, 256)
"""rtm_protocol numbers flock may tag its routes with: 0-4 are the kernel's own (unspec,
redirect, kernel, boot, static). 12 (BIRD's own) is refused by :func:`parse_config`."""
RTPROT_BIRD = 12
"""BIRD tags the routes it writes with this; its kernel protocol treats them as its own."""
MAX_PREPEND = 16
"""Most times ``lastResortPrepend`` may prepend the AS path."""
LINGER_SECONDS = (0.1, 60.0)
"""Bounds of ``withdrawnLingerSeconds``."""


def default_withdrawn_protocol(route_protocol: int) -> int:
    """The protocol after ``route_protocol`` (before it at 255, and never BIRD's 12)."""
    for candidate in (route_protocol + 1, route_protocol - 1, route_protocol + 2):
        if candidate in ROUTE_PROTOCOLS and candidate != RTPROT_BIRD:
            return candidate
    raise AssertionError(route_protocol)  # unreachable: 5-255 has room on one side


def default_last_resort_protocol(route_protocol: int, withdrawn_protocol: int) -> int:
    """The first number after both (before them near 255) that is neither, nor BIRD's 12."""
    taken = {route_protocol, withdrawn_protocol, RTPROT_BIRD}
    start = max(route_protocol, withdrawn_protocol)
    candidates: list[int] = [*range(start + 1, ROUTE_PROTOCOLS.stop), *range(start - 1, ROUTE_PROTOCOLS.start - 1, -1)]
    for candidate in candidates:
        if candidate not in taken:
            return candidate
    raise AssertionError(route_protocol)  # unreachable: 5-255 has room


def listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` -> (host without IPv6 brackets, port). Raises ValueError."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def _default(cls: type, name: str) -> Any:
    """The documented default of a settings field (written once, on the dataclass)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


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


def _route_protocol(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in ROUTE_PROTOCOLS:
        raise ConfigError(f"{where}: {value!r} must be an integer "
                          f"{ROUTE_PROTOCOLS.start}-{ROUTE_PROTOCOLS.stop - 1}")
    if value == RTPROT_BIRD:
        raise ConfigError(f"{where}: {RTPROT_BIRD} is BIRD's own rtm_protocol (its kernel protocol "
                          f"would take the routes for its own)")
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
    _reject_unknown(data, {"cidr", "namespaces", "communities"}, where)
    if "cidr" not in data:
        raise ConfigError(f"{where}.cidr: required")
    namespaces = None
    if data.get("namespaces") is not None:
        items = _list(data["namespaces"], f"{where}.namespaces")
        namespaces = frozenset(_string(ns, f"{where}.namespaces") for ns in items)
    return AnycastPool(cidr=_network(data["cidr"], f"{where}.cidr"), namespaces=namespaces,
                       communities=parse_communities(data.get("communities"), f"{where}.communities"))


_PEER_KEYS = {"address", "asn", "bfd", "passwordFile", "multihop", "sourceAddress", "port", "nodeSelector"}
DEFAULT_MULTIHOP_TTL = 64
"""``multihop: true``: BIRD's own default TTL for multihop sessions."""


def _parse_peer(value: Any, where: str, bfd: BfdSettings) -> BgpPeer:
    data = _mapping(value, where)
    _reject_unknown(data, _PEER_KEYS, where)
    for key in ("address", "asn"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: required")
    address = _address(data["address"], f"{where}.address")

    multihop = data.get("multihop")
    if multihop is True:
        multihop = DEFAULT_MULTIHOP_TTL
    elif multihop is False:
        multihop = None
    elif multihop is not None and (not isinstance(multihop, int) or not 1 <= multihop <= 255):
        raise ConfigError(f"{where}.multihop: {multihop!r} must be true, false or a TTL 1-255")

    source: IPAddress | str | None = None
    if data.get("sourceAddress") is not None:
        if data["sourceAddress"] == FROM_NODE_IP:
            source = FROM_NODE_IP
        else:
            source = _address(data["sourceAddress"], f"{where}.sourceAddress")
            if source.version != address.version:
                raise ConfigError(f"{where}.sourceAddress: {source} and the peer {address} "
                                  f"are of different families")

    port = data.get("port", _default(BgpPeer, "port"))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}.port: {port!r} must be a TCP port 1-65535")

    bfd = parse_bfd(data["bfd"], f"{where}.bfd", bfd) if data.get("bfd") is not None else bfd
    if bfd.enabled and multihop is not None and source is None:
        # BIRD refuses it: "Multihop BGP with BFD requires specified local address".
        raise ConfigError(f"{where}: BFD on a multihop session needs sourceAddress (an address, or "
                          f"{FROM_NODE_IP}); or turn BFD off for this peer (bfd: {{enabled: false}})")

    password_file = None
    if data.get("passwordFile") is not None:
        password_file = pathlib.Path(_string(data["passwordFile"], f"{where}.passwordFile"))
    selector = None
    if data.get("nodeSelector") is not None:
        selector = parse_label_selector(data["nodeSelector"], f"{where}.nodeSelector")
    return BgpPeer(address=address, asn=_asn(data["asn"], f"{where}.asn"), bfd=bfd,
                   password_file=password_file, multihop=multihop, source_address=source,
                   port=port, node_selector=selector)


def _check_peer_addresses(peers: tuple[BgpPeer, ...]) -> None:
    """Two entries for one address must be for different nodes (nodeSelector), e.g. each
    rack's router behind the same gateway address; without selectors they would be the
    same BIRD protocol twice."""
    for i, peer in enumerate(peers):
        for j, other in enumerate(peers[:i]):
            if other.address == peer.address and (peer.node_selector is None or other.node_selector is None):
                raise ConfigError(f"bird.peers[{i}]: {peer.address} is bird.peers[{j}] too; list an address "
                                  f"once, or give both entries a nodeSelector")


def _parse_bird(value: Any) -> BirdConfig:
    data = _mapping(value, "bird")
    known = {"configPath", "socket", "template", "routerId", "asn", "peers", "timeoutSeconds", "bfd"}
    _reject_unknown(data, known, "bird")
    for key in ("routerId", "asn"):
        if key not in data:
            raise ConfigError(f"bird.{key}: required")
    router_id = _address(data["routerId"], "bird.routerId")
    if router_id.version != 4:
        raise ConfigError(f"bird.routerId: {router_id} must be an IPv4 address (BGP router id)")
    bfd = parse_bfd(data["bfd"], "bird.bfd", BfdSettings()) if data.get("bfd") is not None else BfdSettings()
    peers = tuple(_parse_peer(p, f"bird.peers[{i}]", bfd)
                  for i, p in enumerate(_list(data.get("peers", []), "bird.peers")))
    _check_peer_addresses(peers)
    template = data.get("template")
    return BirdConfig(
        config_path=pathlib.Path(_string(data.get("configPath", str(_default(BirdConfig, "config_path"))),
                                         "bird.configPath")),
        socket=pathlib.Path(_string(data.get("socket", str(_default(BirdConfig, "socket"))), "bird.socket")),
        router_id=router_id,
        asn=_asn(data["asn"], "bird.asn"),
        peers=peers,
        bfd=bfd,
        template=pathlib.Path(_string(template, "bird.template")) if template is not None else None,
        timeout_seconds=_positive(data.get("timeoutSeconds", _default(BirdConfig, "timeout_seconds")),
                                  "bird.timeoutSeconds"),
    )


def _parse_datapath(value: Any) -> DatapathConfig:
    data = _mapping(value if value is not None else {}, "datapath")
    _reject_unknown(data, {"connectionPinning", "markMask", "nexthopGroups", "resilientBuckets", "daisyChain"},
                    "datapath")
    pinning = data.get("connectionPinning", _default(DatapathConfig, "connection_pinning"))
    if not isinstance(pinning, bool):
        raise ConfigError(f"datapath.connectionPinning: {pinning!r} must be true or false")
    mask = data.get("markMask", _default(DatapathConfig, "mark_mask"))
    if isinstance(mask, str):  # YAML reads 0x0ff00000 as an int; a quoted "0x0ff00000" is fine too
        try:
            mask = int(mask, 0)
        except ValueError:
            raise ConfigError(f"datapath.markMask: {mask!r} is not an integer") from None
    if isinstance(mask, bool) or not isinstance(mask, int):
        raise ConfigError(f"datapath.markMask: {mask!r} is not an integer")
    problem = mask_problem(mask)
    if problem is not None:
        raise ConfigError(f"datapath.markMask: {problem}")
    groups = data.get("nexthopGroups", _default(DatapathConfig, "nexthop_groups"))
    if groups not in NEXTHOP_GROUP_MODES:
        raise ConfigError(f"datapath.nexthopGroups: {groups!r} must be one of {', '.join(NEXTHOP_GROUP_MODES)}")
    buckets = data.get("resilientBuckets", _default(DatapathConfig, "resilient_buckets"))
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 8 <= buckets <= 32768:
        raise ConfigError(f"datapath.resilientBuckets: {buckets!r} must be an integer 8-32768")
    return DatapathConfig(connection_pinning=pinning, mark_mask=mask, nexthop_groups=groups,
                          resilient_buckets=buckets, daisy_chain=_parse_daisy_chain(data.get("daisyChain")))


def _parse_daisy_chain(value: Any) -> DaisyChainConfig:
    where = "datapath.daisyChain"
    data = _mapping(value if value is not None else {}, where)
    _reject_unknown(data, {"enabled", "port", "vni", "maxHops"}, where)
    enabled = data.get("enabled", _default(DaisyChainConfig, "enabled"))
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}.enabled: {enabled!r} must be true or false")

    def integer(key: str, field: str, low: int, high: int) -> int:
        number = data.get(key, _default(DaisyChainConfig, field))
        if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
            raise ConfigError(f"{where}.{key}: {number!r} must be an integer {low}-{high}")
        return number

    max_hops = integer("maxHops", "max_hops", 1, MAX_HOPS_LIMIT)
    vni = integer("vni", "vni", 1, (1 << 24) - 1 - max_hops)
    return DaisyChainConfig(enabled=enabled, port=integer("port", "port", 1, 65535), vni=vni, max_hops=max_hops)


_TOP_KEYS = {
    "nodeName", "hostNetns", "stateDir", "cniSocket", "podCIDRs", "podCIDRCommunities", "anycastPools",
    "routeProtocol", "withdrawnRouteProtocol", "withdrawnLingerSeconds", "lastResortRouteProtocol",
    "lastResortPrepend", "tickSeconds", "resyncSeconds",
    "bird", "listen", "eligibility",
    "procPath", "maxAnycastPerPod", "datapath",
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

    protocol = _route_protocol(data.get("routeProtocol", _default(AgentConfig, "route_protocol")),
                               "routeProtocol")
    withdrawn_protocol = _route_protocol(
        data.get("withdrawnRouteProtocol", default_withdrawn_protocol(protocol)),
        "withdrawnRouteProtocol")
    if withdrawn_protocol == protocol:
        raise ConfigError(f"withdrawnRouteProtocol: {withdrawn_protocol} must differ from routeProtocol")
    last_resort_protocol = _route_protocol(
        data.get("lastResortRouteProtocol", default_last_resort_protocol(protocol, withdrawn_protocol)),
        "lastResortRouteProtocol")
    if last_resort_protocol in (protocol, withdrawn_protocol):
        raise ConfigError(f"lastResortRouteProtocol: {last_resort_protocol} must differ from routeProtocol "
                          f"and withdrawnRouteProtocol")
    prepend = data.get("lastResortPrepend", _default(AgentConfig, "last_resort_prepend"))
    if isinstance(prepend, bool) or not isinstance(prepend, int) or not 1 <= prepend <= MAX_PREPEND:
        raise ConfigError(f"lastResortPrepend: {prepend!r} must be an integer 1-{MAX_PREPEND}")
    linger = _positive(data.get("withdrawnLingerSeconds", _default(AgentConfig, "withdrawn_linger_seconds")),
                       "withdrawnLingerSeconds")
    if not LINGER_SECONDS[0] <= linger <= LINGER_SECONDS[1]:
        raise ConfigError(f"withdrawnLingerSeconds: {linger:g} must be {LINGER_SECONDS[0]:g}-{LINGER_SECONDS[1]:g}")

    pod_cidrs = None
    if data.get("podCIDRs") is not None:
        pod_cidrs = tuple(_network(c, f"podCIDRs[{i}]")
                          for i, c in enumerate(_list(data["podCIDRs"], "podCIDRs")))

    listen = _string(data.get("listen", _default(AgentConfig, "listen")), "listen")
    try:
        listen_address(listen)
    except ValueError as exc:
        raise ConfigError(f"listen: {exc}") from None

    if "bird" not in data:
        raise ConfigError("bird: required (routerId and asn at least)")

    eligibility = data.get("eligibility", _default(AgentConfig, "eligibility"))
    if eligibility not in RULES:
        raise ConfigError(f"eligibility: {eligibility!r} is not one of {', '.join(RULES)}")

    max_anycast = data.get("maxAnycastPerPod", _default(AgentConfig, "max_anycast_per_pod"))
    if isinstance(max_anycast, bool) or not isinstance(max_anycast, int) \
            or not 1 <= max_anycast <= MAX_ANYCAST_PER_POD_LIMIT:
        raise ConfigError(f"maxAnycastPerPod: {max_anycast!r} must be an integer 1-{MAX_ANYCAST_PER_POD_LIMIT}")

    host_netns = data.get("hostNetns")
    return AgentConfig(
        node_name=NodeName(_string(node_name, "nodeName")),
        host_netns=_string(host_netns, "hostNetns") if host_netns is not None else None,
        state_dir=pathlib.Path(_string(data.get("stateDir", str(_default(AgentConfig, "state_dir"))), "stateDir")),
        cni_socket=pathlib.Path(_string(data.get("cniSocket", str(_default(AgentConfig, "cni_socket"))),
                                        "cniSocket")),
        pod_cidrs=pod_cidrs,
        pod_cidr_communities=parse_communities(data.get("podCIDRCommunities"), "podCIDRCommunities"),
        anycast_pools=tuple(_parse_pool(p, f"anycastPools[{i}]")
                            for i, p in enumerate(_list(data.get("anycastPools", []), "anycastPools"))),
        route_protocol=protocol,
        withdrawn_route_protocol=withdrawn_protocol,
        withdrawn_linger_seconds=linger,
        last_resort_route_protocol=last_resort_protocol,
        last_resort_prepend=prepend,
        tick_seconds=_positive(data.get("tickSeconds", _default(AgentConfig, "tick_seconds")), "tickSeconds"),
        resync_seconds=_positive(data.get("resyncSeconds", _default(AgentConfig, "resync_seconds")),
                                 "resyncSeconds"),
        bird=_parse_bird(data["bird"]),
        listen=listen,
        eligibility=eligibility,
        max_anycast_per_pod=max_anycast,
        datapath=_parse_datapath(data.get("datapath")),
        proc_path=_string(data.get("procPath", _default(AgentConfig, "proc_path")), "procPath"),
    )
