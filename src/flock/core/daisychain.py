"""Daisy chaining, the pure part: the ring of nodes and what each node's kernel holds for it.

Connection pinning keeps a flow on its pod while the *node's* next hops change. When the
*fabric* moves a flow to another node (a node withdrew or re-advertised an anycast
prefix, and the top-of-rack re-hashed), the flow's packets reach a node that has no
socket for it, and a pod there answers with a reset. Daisy chaining (Beamer, NSDI'18;
measured here in shared/notes/cross-node.md) forwards such a *mid-flow* TCP packet (not a
SYN) that a node does not own (no pinned conntrack entry) to the next node of a ring,
over VXLAN; the node that owns it delivers it through its own pinning, replies go from
the owner straight to the client. SYNs are never forwarded: new connections go where the
fabric sends them.

The ring is every Node with an InternalIP whose Ready condition is not False or Unknown,
in name order (flock is the CNI: every node that runs pods runs flock). A packet carries
its hop count in the VXLAN VNI: ``vni + h`` for the h-th hop (1 .. ``hops``), ``vni``
for the "last stop", back to the node it started from, which delivers it to a local pod
(so a flow nobody owns is reset within a round trip, never left hanging). ``hops`` is
``min(maxHops, nodes - 1)``: node p sends hop h to its successor p+1, and at the last hop
it sends the last stop to p - hops, the origin. Bounded and loop-free.

Per node (see flock.adapters.daisychain)::

    links   flkdc<h> (h = 1 .. hops): VXLAN id vni+h, local self, remote successor
            flkdcl: VXLAN id vni, remote the node ``hops`` back (the origin of a last hop)
            every one: MAC chain_mac(self), a permanent neighbour GATEWAY_V4/V6 -> chain_mac(remote)
    tables  TABLE_BASE + h: each anycast pool via GATEWAY over flkdc<h>; TABLE_BASE: over flkdcl
            (pools only: the VXLAN packet keeps the mark, its own lookup must fall through)
    rules   fwmark CHAIN iif flkdc<h> -> table of hop h+1 (the last hop's -> TABLE_BASE)
            fwmark CHAIN -> TABLE_BASE + 1 (a packet from the fabric: its first hop)

The nftables rules that set the CHAIN mark are in flock's table (flock.adapters.pinning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from flock.core.model import IPAddress, IPNetwork

LINK_PREFIX = "flkdc"
"""flock's VXLAN links: ``flkdc1`` .. ``flkdc<hops>`` and ``flkdcl`` (``ip -d link show type vxlan``)."""
LAST_STOP_LINK = "flkdcl"
TABLE_BASE = 1_100_000
"""Chain tables: 1100000 (last stop) and 1100001 .. (hops); outside pinning's 1000001-1004095."""
RULE_PRIORITY_HOP = 1001
"""Rules of packets that came along the chain (by input link): after pinning's 1000."""
RULE_PRIORITY_FIRST = 1002
"""The rule of a packet from the fabric (first hop): after the by-link ones."""
GATEWAY_V4 = ipaddress.IPv4Address("169.254.0.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::1")
"""The next node as a gateway: a permanent neighbour entry gives its VXLAN MAC."""
LINK_ADDRESS = ipaddress.IPv4Address("169.254.0.2")
"""Each chain link's own address (scope link): the reverse-path check needs one."""
DEFAULT_VNI = 0xF10C00
"""15797248: VNIs 15797248 .. 15797248 + maxHops. Clear of the small VNIs EVPN fabrics number by VLAN."""
DEFAULT_PORT = 4789
DEFAULT_MAX_HOPS = 8
MAX_HOPS_LIMIT = 64


@dataclasses.dataclass(frozen=True)
class DaisyChainConfig:
    """The ``datapath.daisyChain`` key."""

    enabled: bool = True
    """Forward mid-flow packets a node does not own along the ring (needs connectionPinning,
    which says who owns a flow). Default true."""
    port: int = DEFAULT_PORT
    """UDP port of the VXLAN between nodes. Default 4789."""
    vni: int = DEFAULT_VNI
    """First VNI; the ring uses vni .. vni + maxHops. Default 15797248 (0xf10c00)."""
    max_hops: int = DEFAULT_MAX_HOPS
    """How many nodes a packet visits looking for its owner, at most. Default 8."""


@dataclasses.dataclass(frozen=True, order=True)
class Member:
    """One node of the ring."""

    name: str
    address: IPAddress


def ring_members(nodes: Iterable[Mapping[str, Any]]) -> list[Member]:
    """The ring: Nodes with an InternalIP and a Ready condition that is not False or
    Unknown (a node without conditions counts), by name. A node's IPv4 InternalIP is
    preferred; every member must then use the family most of them have."""
    found: list[tuple[str, list[IPAddress]]] = []
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name") or "")
        status = node.get("status") or {}
        ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if not name or ready in ("False", "Unknown"):
            continue
        addresses = []
        for item in status.get("addresses") or []:
            if item.get("type") != "InternalIP":
                continue
            try:
                addresses.append(ipaddress.ip_address(item.get("address")))
            except ValueError:
                continue
        if addresses:
            found.append((name, addresses))
    v4 = sum(any(a.version == 4 for a in addresses) for _, addresses in found)
    family = 4 if v4 * 2 >= len(found) else 6
    members = []
    for name, addresses in found:
        address = next((a for a in addresses if a.version == family), None)
        if address is not None:
            members.append(Member(name, address))
    return sorted(members)


def chain_mac(address: IPAddress) -> str:
    """The MAC of a node's VXLAN links: locally administered, from its address (IPv4: its
    bytes; IPv6: a hash). Each node's differs: VXLAN drops a frame from its own MAC."""
    raw = address.packed if address.version == 4 else hashlib.sha256(address.packed).digest()[:4]
    return "02:66:" + ":".join(f"{b:02x}" for b in raw)


@dataclasses.dataclass(frozen=True)
class ChainLink:
    name: str
    vni: int
    remote: IPAddress


@dataclasses.dataclass(frozen=True)
class ChainRoute:
    table: int
    dst: IPNetwork
    link: str

    def __str__(self) -> str:
        gateway = GATEWAY_V4 if self.dst.version == 4 else GATEWAY_V6
        return f"{self.dst} via {gateway} dev {self.link} onlink table {self.table}"


@dataclasses.dataclass(frozen=True)
class ChainRule:
    version: int
    priority: int
    iif: str | None
    table: int

    def __str__(self) -> str:
        iif = f" iif {self.iif}" if self.iif else ""
        return f"ip -{self.version} rule pref {self.priority} fwmark CHAIN{iif} lookup {self.table}"


@dataclasses.dataclass(frozen=True)
class ChainPlan:
    """What one node's kernel holds for the ring (nothing when it has no ring)."""

    local: IPAddress | None = None
    links: tuple[ChainLink, ...] = ()
    routes: tuple[ChainRoute, ...] = ()
    rules: tuple[ChainRule, ...] = ()
    peers: tuple[IPAddress, ...] = ()
    """Every other member: the only sources whose VXLAN packets are taken in."""
    size: int = 0
    """Nodes in the ring (0: this node has none)."""
    hops: int = 0

    def describe(self) -> str:
        if not self.links:
            return "off"
        successor = next(link.remote for link in self.links if link.name != LAST_STOP_LINK)
        return f"{self.size} nodes, next {successor}, up to {self.hops} hop(s)"


def link_name(hop: int) -> str:
    return f"{LINK_PREFIX}{hop}"


def watched(members: Sequence[Member], node_name: str, down: Collection[IPAddress], max_hops: int) -> tuple[
        IPAddress, ...]:
    """The members ``node_name`` runs BFD with to know the ring is alive: each way round
    the ring, every member up to and including the first one not ``down`` (at most
    ``max_hops`` each way). Each of those does the same, so every session has both ends;
    a silent successor is passed over within a BFD detection time, and watched on, so it
    comes back when it answers again."""
    names = [m.name for m in members]
    if node_name not in names or len(members) < 2:
        return ()
    position = names.index(node_name)
    found: list[IPAddress] = []
    for step in (1, -1):
        for distance in range(1, min(max_hops, len(members) - 1) + 1):
            member = members[(position + step * distance) % len(members)]
            if member.address not in found:
                found.append(member.address)
            if member.address not in down:
                break
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))


def plan_chain(members: Sequence[Member], node_name: str, config: DaisyChainConfig,
               pools: Sequence[IPNetwork], down: Collection[IPAddress] = ()) -> ChainPlan:
    """What ``node_name`` holds for the ring ``members`` (an empty plan when it is not in
    it, alone, or daisy chaining is off). Members ``down`` (silent on BFD) are left out."""
    members = [m for m in members if m.address not in down or m.name == node_name]
    names = [m.name for m in members]
    if not config.enabled or node_name not in names or len(members) < 2:
        return ChainPlan()
    position = names.index(node_name)
    local = members[position].address
    successor = members[(position + 1) % len(members)].address
    hops = min(config.max_hops, len(members) - 1)
    origin = members[(position - hops) % len(members)].address
    links = [ChainLink(link_name(h), config.vni + h, successor) for h in range(1, hops + 1)]
    links.append(ChainLink(LAST_STOP_LINK, config.vni, origin))
    routes = []
    for link in links:
        table = TABLE_BASE if link.name == LAST_STOP_LINK else TABLE_BASE + link.vni - config.vni
        routes += [ChainRoute(table, pool, link.name) for pool in pools]
    versions = sorted({pool.version for pool in pools})
    rules = []
    for version in versions:
        for h in range(1, hops + 1):
            after = TABLE_BASE + h + 1 if h < hops else TABLE_BASE
            rules.append(ChainRule(version, RULE_PRIORITY_HOP, link_name(h), after))
        rules.append(ChainRule(version, RULE_PRIORITY_FIRST, None, TABLE_BASE + 1))
    peers = tuple(sorted({m.address for m in members if m.name != node_name}, key=str))
    return ChainPlan(local, tuple(links), tuple(routes), tuple(rules), peers, len(members), hops)
