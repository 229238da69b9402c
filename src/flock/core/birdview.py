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
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from flock.core.model import IPAddress, IPNetwork, address_sort_key
from flock.core.settings import AgentConfig, BgpPeer

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
    """eBGP sessions, sorted by neighbour address (IPv4 first)."""
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


def _peer_view(peer: BgpPeer) -> PeerView:
    suffix = "v4" if peer.address.version == 4 else "v6"
    return PeerView(
        name=protocol_name(peer.address),
        address=str(peer.address),
        asn=peer.asn,
        family=f"ipv{peer.address.version}",
        export_filter=f"flock_export_{suffix}",
    )


def _networks(networks: Iterable[IPNetwork], version: int) -> tuple[str, ...]:
    chosen = {n for n in networks if n.version == version}
    return tuple(str(n) for n in sorted(chosen, key=_network_sort_key))


KERNEL_SCAN_SECONDS = 30
"""BIRD follows the kernel's route changes as they happen (netlink notifications); its
periodic full scan only backs that up, e.g. after its receive buffer overflowed."""


def bird_view(*, config: AgentConfig, pod_cidrs: Sequence[IPNetwork]) -> BirdView:
    """Build the view for ``bird.conf``; ``pod_cidrs`` are the node's pod ranges (the
    resolved ``podCIDRs`` setting)."""
    pools = config.anycast_pools
    pod_set = set(pod_cidrs)
    peers = sorted(set(config.bird.peers), key=lambda p: (*address_sort_key(p.address), p.asn))
    pool_cidrs = [pool.cidr for pool in pools]
    return BirdView(
        node_name=str(config.node_name),
        router_id=str(config.bird.router_id),
        asn=config.bird.asn,
        route_protocol=config.route_protocol,
        withdrawn_route_protocol=config.withdrawn_route_protocol,
        last_resort_route_protocol=config.last_resort_route_protocol,
        last_resort_prepend=config.last_resort_prepend,
        peers=tuple(_peer_view(p) for p in peers),
        pod_cidrs_v4=_networks(pod_set, 4),
        pod_cidrs_v6=_networks(pod_set, 6),
        pools_v4=_networks(pool_cidrs, 4),
        pools_v6=_networks(pool_cidrs, 6),
        scan_seconds=KERNEL_SCAN_SECONDS,
    )
