"""The BIRD view model: everything ``bird/bird.conf.j2`` needs, ready-made.

Pure: data in, data out (no jinja2, no files). :func:`bird_view` turns the agent's
configuration and the node's pod CIDRs into a :class:`BirdView` whose fields are plain
strings, ints and tuples, already sorted and deduplicated, so the template does no
lookups and the same inputs always render the same text (a restarted agent then leaves
BIRD alone).

The active anycast prefixes are not in the view: BIRD learns them from the kernel (the
routes of ``routeProtocol``), so bird.conf does not change when pods come and go. The
learning import filter and the export filters both admit only host prefixes inside the
pools, beside the resolver's own check.

What the Node says also shapes the view: its labels pick the peers whose ``nodeSelector``
matches (:func:`peers_for_node`), and its InternalIPs stand in for ``sourceAddress:
fromNodeIP``. A peer's TCP-MD5 password is in the view (``PeerView.password``, left out
of its repr) because bird.conf is the one place it goes.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence

from flock.core.fabric import FROM_NODE_IP, Community
from flock.core.model import IPAddress, IPNetwork, address_sort_key
from flock.core.settings import AgentConfig, AnycastPool, BgpPeer
from flock.errors import BirdConfigRejected

_NOT_IN_NAME = re.compile(r"[^0-9A-Za-z]")


def protocol_name(peer: IPAddress) -> str:
    """BIRD protocol name for a peer: ``flock_peer_192_0_2_2``, ``flock_peer_2001_db8_ffff__1``.

    Every character that is not a letter or digit becomes ``_``. Distinct addresses give
    distinct names: an IPv4 name has exactly three ``_`` between digits, an IPv6 name
    either seven or a ``__`` (from ``::``).
    """
    return "flock_peer_" + _NOT_IN_NAME.sub("_", str(peer))


def _network_sort_key(network: IPNetwork) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


@dataclasses.dataclass(frozen=True)
class BfdView:
    """BFD timers of one session, as BIRD's ``bfd { }`` block of a BGP protocol takes them."""

    interval_ms: int
    """Desired transmit and required receive interval, milliseconds."""
    multiplier: int
    """Packets missed in a row that declare the peer down."""
    detection_ms: int
    """interval_ms x multiplier (shown in a comment)."""


@dataclasses.dataclass(frozen=True)
class RingBfdView:
    """Daisy chaining's ring neighbours this node runs multihop BFD with (flock.core.daisychain.watched)."""

    local: str
    """This node's address in the ring (its InternalIP)."""
    neighbours: tuple[str, ...]
    timers: BfdView


@dataclasses.dataclass(frozen=True)
class CommunitiesView:
    """Communities to attach, as BIRD literals: ``(65000, 100)``, ``(65000, 1, 2)``."""

    standard: tuple[str, ...] = ()
    large: tuple[str, ...] = ()
    text: str = ""
    """As written in the config, for a comment: ``65000:100 65000:1:2``."""

    def __bool__(self) -> bool:
        return bool(self.standard or self.large)


@dataclasses.dataclass(frozen=True)
class PoolCommunitiesView:
    """The communities of one anycast pool, attached to the prefixes learned inside it."""

    pool: str
    """The pool's CIDR, e.g. ``198.51.100.0/24``; its prefix set is ``[ 198.51.100.0/24+ ]``."""
    communities: CommunitiesView


@dataclasses.dataclass(frozen=True)
class PeerView:
    """One eBGP session as the template renders it."""

    name: str
    """BIRD protocol name derived from the address, e.g. ``flock_peer_192_0_2_2``."""
    address: str
    """The neighbour's address, e.g. ``192.0.2.2`` or ``2001:db8:ffff::1``."""
    asn: int
    """The neighbour's AS number."""
    family: str
    """BIRD channel the session carries: ``ipv4`` or ``ipv6`` (the address's family)."""
    export_filter: str
    """Name of the export filter of that channel: ``flock_export_v4`` or ``flock_export_v6``."""
    port: int | None = None
    """The peer's TCP port when it is not 179."""
    source_address: str | None = None
    """Local address of the session; None: chosen by the kernel's routing."""
    source_from_node: bool = False
    """``source_address`` is the Node's InternalIP (``sourceAddress: fromNodeIP``)."""
    multihop: int | None = None
    """eBGP multihop TTL; None: a directly connected neighbour."""
    bfd: BfdView | None = None
    """BFD timers; None: no BFD for this session."""
    password: str | None = dataclasses.field(default=None, repr=False)
    """TCP-MD5 password, checked to be safe inside BIRD's double quotes; never in a repr."""
    password_file: str | None = None
    """Where the password came from (shown in a comment; the path is not secret)."""
    selector: str | None = None
    """The peer's nodeSelector in kubectl syntax (shown in a comment); None: every node."""


@dataclasses.dataclass(frozen=True)
class BirdView:
    """Everything the BIRD template needs; strings are already in BIRD syntax.

    Prefix tuples are sorted numerically (IPv4 and IPv6 apart) and free of duplicates.
    """

    node_name: str
    """The Kubernetes node this config is for (only shown in the header)."""
    router_id: str
    """BGP router id, an IPv4 address."""
    asn: int
    """This node's AS number."""
    route_protocol: int
    """rtm_protocol number of flock's advertised kernel routes: the only ones BIRD learns."""
    withdrawn_route_protocol: int
    """rtm_protocol number of flock's withdrawn routes (mentioned in comments only)."""
    last_resort_route_protocol: int
    """rtm_protocol number of flock's routes to last-resort pods: learned, exported prepended."""
    last_resort_prepend: int
    """How many times a last-resort route's AS path is prepended with ``asn``."""
    peers: tuple[PeerView, ...]
    """eBGP sessions of this node (nodeSelector applied), sorted by neighbour address (IPv4 first)."""
    bfd: bool
    """Whether any session uses BFD (then bird.conf has ``protocol bfd``)."""
    pool_communities_v4: tuple[PoolCommunitiesView, ...]
    """IPv4 pools that have communities, sorted like ``pools_v4``."""
    pool_communities_v6: tuple[PoolCommunitiesView, ...]
    """IPv6 pools that have communities, sorted like ``pools_v6``."""
    pod_cidr_communities: CommunitiesView
    """Communities attached to the pod CIDRs (both families)."""
    pod_cidrs_v4: tuple[str, ...]
    """This node's IPv4 pod CIDRs, advertised exactly as they are."""
    pod_cidrs_v6: tuple[str, ...]
    """This node's IPv6 pod CIDRs, advertised exactly as they are."""
    pools_v4: tuple[str, ...]
    """IPv4 anycast pool CIDRs; only prefixes inside them may be exported as anycast."""
    pools_v6: tuple[str, ...]
    """IPv6 anycast pool CIDRs; only prefixes inside them may be exported as anycast."""
    scan_seconds: int
    """How often BIRD re-reads the whole kernel table besides following its changes."""
    ring_bfd: RingBfdView | None = None
    """Multihop BFD sessions with daisy chaining's ring neighbours; None: none."""


def peers_for_node(peers: Iterable[BgpPeer], labels: Mapping[str, str]) -> tuple[BgpPeer, ...]:
    """The peers of a node with these labels: those without a nodeSelector and those whose
    selector matches, in their configured order."""
    return tuple(p for p in peers if p.node_selector is None or p.node_selector.matches(labels))


def _source_address(peer: BgpPeer, node_addresses: Sequence[IPAddress]) -> str | None:
    if peer.source_address is None:
        return None
    if peer.source_address != FROM_NODE_IP:
        return str(peer.source_address)
    for address in node_addresses:
        if address.version == peer.address.version:
            return str(address)
    raise BirdConfigRejected(
        f"peer {peer.address}: sourceAddress {FROM_NODE_IP}, but the Node has no IPv{peer.address.version} "
        f"InternalIP in status.addresses ({', '.join(map(str, node_addresses)) or 'none'})")


def _peer_view(peer: BgpPeer, node_addresses: Sequence[IPAddress]) -> PeerView:
    suffix = "v4" if peer.address.version == 4 else "v6"
    if peer.password_file is not None and peer.password is None:
        # flock.adapters.configfile.read_passwords fills it in at start-up: rendering without
        # it would bring up a session the peer refuses.
        raise BirdConfigRejected(f"peer {peer.address}: the password of {peer.password_file} was not read")
    return PeerView(
        name=protocol_name(peer.address),
        address=str(peer.address),
        asn=peer.asn,
        family=f"ipv{peer.address.version}",
        export_filter=f"flock_export_{suffix}",
        port=peer.port if peer.port != 179 else None,
        source_address=_source_address(peer, node_addresses),
        source_from_node=peer.source_address == FROM_NODE_IP,
        multihop=peer.multihop,
        bfd=BfdView(peer.bfd.interval_ms, peer.bfd.multiplier, peer.bfd.detection_ms) if peer.bfd.enabled else None,
        password=peer.password,
        password_file=str(peer.password_file) if peer.password_file is not None else None,
        selector=str(peer.node_selector) if peer.node_selector is not None else None,
    )


def _communities(communities: Iterable[Community]) -> CommunitiesView:
    chosen = sorted(set(communities), key=lambda c: (c.large, c.parts))
    return CommunitiesView(standard=tuple(c.bird() for c in chosen if not c.large),
                           large=tuple(c.bird() for c in chosen if c.large),
                           text=" ".join(map(str, chosen)))


def _pool_communities(pools: Iterable[AnycastPool], version: int) -> tuple[PoolCommunitiesView, ...]:
    merged: dict[IPNetwork, set[Community]] = {}
    for pool in pools:
        if pool.cidr.version == version and pool.communities:
            merged.setdefault(pool.cidr, set()).update(pool.communities)
    return tuple(PoolCommunitiesView(str(cidr), _communities(merged[cidr]))
                 for cidr in sorted(merged, key=_network_sort_key))


def _networks(networks: Iterable[IPNetwork], version: int) -> tuple[str, ...]:
    chosen = {n for n in networks if n.version == version}
    return tuple(str(n) for n in sorted(chosen, key=_network_sort_key))


KERNEL_SCAN_SECONDS = 30
"""BIRD follows the kernel's route changes as they happen (netlink notifications); its
periodic full scan only backs that up, e.g. after its receive buffer overflowed."""


def bird_view(*, config: AgentConfig, pod_cidrs: Sequence[IPNetwork],
              node_labels: Mapping[str, str] | None = None,
              node_addresses: Sequence[IPAddress] = (), ring_local: IPAddress | None = None,
              ring_neighbours: Sequence[IPAddress] = ()) -> BirdView:
    """Build the view for ``bird.conf``; ``pod_cidrs`` are the node's pod ranges (the
    resolved ``podCIDRs`` setting), ``node_labels`` the Node's labels (None: none, so a
    peer with a nodeSelector is left out), ``node_addresses`` its InternalIPs.

    Raises BirdConfigRejected when this node would get two sessions to one address, a
    ``fromNodeIP`` the Node has no address for, or a password that was not read.
    """
    pools = config.anycast_pools
    pod_set = set(pod_cidrs)
    chosen = peers_for_node(config.bird.peers, node_labels or {})
    peers = sorted(set(chosen), key=lambda p: (*address_sort_key(p.address), p.asn))
    for previous, peer in itertools.pairwise(peers):
        if previous.address == peer.address:
            raise BirdConfigRejected(
                f"two peers with address {peer.address} select this node (nodeSelector "
                f"{previous.node_selector} and {peer.node_selector}): a node has one session per address")
    pool_cidrs = [pool.cidr for pool in pools]
    views = tuple(_peer_view(p, node_addresses) for p in peers)
    return BirdView(
        node_name=str(config.node_name),
        router_id=str(config.bird.router_id),
        asn=config.bird.asn,
        route_protocol=config.route_protocol,
        withdrawn_route_protocol=config.withdrawn_route_protocol,
        last_resort_route_protocol=config.last_resort_route_protocol,
        last_resort_prepend=config.last_resort_prepend,
        peers=views,
        bfd=any(view.bfd is not None for view in views),
        pool_communities_v4=_pool_communities(pools, 4),
        pool_communities_v6=_pool_communities(pools, 6),
        pod_cidr_communities=_communities(config.pod_cidr_communities),
        pod_cidrs_v4=_networks(pod_set, 4),
        pod_cidrs_v6=_networks(pod_set, 6),
        pools_v4=_networks(pool_cidrs, 4),
        pools_v6=_networks(pool_cidrs, 6),
        scan_seconds=KERNEL_SCAN_SECONDS,
        ring_bfd=_ring_bfd(config, ring_local, ring_neighbours),
    )


def _ring_bfd(config: AgentConfig, local: IPAddress | None, neighbours: Sequence[IPAddress]) -> RingBfdView | None:
    timers = config.bird.bfd
    wanted = [n for n in neighbours if local is not None and n.version == local.version]
    if local is None or not wanted or not timers.enabled:
        return None
    return RingBfdView(str(local), tuple(str(n) for n in wanted),
                       BfdView(timers.interval_ms, timers.multiplier, timers.detection_ms))
