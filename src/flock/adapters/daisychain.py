"""Daisy chaining in the node's kernel: flock's VXLAN links, their neighbours, the chain
tables and rules (the ring and the plan: flock.core.daisychain; the nftables rules that
choose which packets go along the chain: flock.adapters.pinning).

Written with pyroute2: the ring changes when Nodes come and go, not per pod, so a few
round trips per change cost nothing worth an encoder of our own. :meth:`DaisyChain.apply`
reads what the kernel holds and writes only what differs: an agent restart with the same
ring makes no write.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flock.adapters import sysctl
from flock.adapters.netns import named as named_netns
from flock.adapters.pinning import TABLE, NftFailed, nft
from flock.adapters.plumbing import in_netns
from flock.core.daisychain import (
    GATEWAY_V4,
    GATEWAY_V6,
    LINK_ADDRESS,
    LINK_PREFIX,
    MAX_HOPS_LIMIT,
    RULE_PRIORITY_FIRST,
    RULE_PRIORITY_HOP,
    TABLE_BASE,
    ChainLink,
    ChainPlan,
    ChainRoute,
    ChainRule,
    chain_mac,
)
from flock.core.model import IPAddress
from flock.errors import PinningError

logger = logging.getLogger(__name__)

_TABLES = range(TABLE_BASE, TABLE_BASE + MAX_HOPS_LIMIT + 1)
NUD_PERMANENT = 0x80


@dataclasses.dataclass
class ChainChanges:
    """What :meth:`DaisyChain.apply` wrote (all 0: the kernel held the plan already)."""

    links: int = 0
    neighbours: int = 0
    routes: int = 0
    rules: int = 0
    peers: int = 0

    @property
    def total(self) -> int:
        return self.links + self.neighbours + self.routes + self.rules + self.peers


@dataclasses.dataclass(frozen=True)
class HeldLink:
    """A flkdc VXLAN link as the kernel holds it."""

    link: ChainLink
    local: IPAddress | None
    port: int
    mac: str
    index: int


def _held_link(msg: Any) -> HeldLink | None:
    """A flkdc link from its RTM_NEWLINK, None if it is not VXLAN (not one of ours)."""
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    raw = info.get_attr("IFLA_INFO_DATA")
    data = dict(raw["attrs"]) if raw else {}
    remote = data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6")
    if remote is None or "IFLA_VXLAN_ID" not in data:
        return None
    local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
    link = ChainLink(str(msg.get_attr("IFLA_IFNAME")), int(data["IFLA_VXLAN_ID"]), ipaddress.ip_address(remote))
    return HeldLink(link, ipaddress.ip_address(local) if local else None, int(data.get("IFLA_VXLAN_PORT", 0)),
                    str(msg.get_attr("IFLA_ADDRESS")), msg["index"])


def _set_link_sysctls(name: str, proc: str) -> None:
    # Packets along the chain come in with the client's source address, which the node
    # routes elsewhere: loose reverse-path check on the link (the kernel takes the max of
    # "all" and the link's). No IPv6 address of its own: nothing but forwarded packets.
    sysctl.write(f"net/ipv4/conf/{name}/rp_filter", "2", proc)
    sysctl.write(f"net/ipv6/conf/{name}/addr_gen_mode", "1", proc, missing_ok=True)
    sysctl.write(f"net/ipv6/conf/{name}/accept_ra", "0", proc, missing_ok=True)


def _apply(plan: ChainPlan, *, port: int, protocol: int, mark: int, mask: int, proc: str) -> ChainChanges:
    """One dump of each kind, then: stale rules and routes go first, links change, new
    routes and rules come last, so nothing is ever sent to a table or a link that is not
    (or no longer) there."""
    done = ChainChanges()
    wanted = {link.name: HeldLink(link, plan.local, port, chain_mac(plan.local), 0)
              for link in plan.links} if plan.local is not None else {}
    with IPRoute() as ipr:
        held = {found.link.name: found for msg in ipr.get_links()
                if str(msg.get_attr("IFLA_IFNAME")).startswith(LINK_PREFIX) and (found := _held_link(msg))}
        changed = {name for name, link in held.items()
                   if dataclasses.replace(link, index=0) != wanted.get(name)}
        rules, stale_rules = _held_rules(ipr, plan.rules, protocol, mark, mask)
        # A chain route goes through a chain link, and goes with it: none without a link.
        routes, stale_routes = _held_routes(ipr, plan.routes, protocol) if held else (set(), [])
        for rule, held_mark, held_mask in stale_rules:
            _rule(ipr, "del", rule, held_mark, held_mask, protocol)
        for route in stale_routes:
            ipr.route("del", dst=str(route.dst), table=route.table, proto=protocol)
        for name in changed:
            ipr.link("del", index=held[name].index)
        routes = {r for r in routes if r.link not in changed}  # gone with their link
        for name, want in wanted.items():
            if name in held and name not in changed:
                continue
            spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": want.link.vni, "vxlan_port": port,
                                    "vxlan_learning": 0, "address": want.mac}
            if want.link.remote.version == 4:
                spec.update(vxlan_group=str(want.link.remote), vxlan_local=str(want.local))
            else:
                spec.update(vxlan_group6=str(want.link.remote), vxlan_local6=str(want.local))
            ipr.link("add", **spec)
            index = ipr.link_lookup(ifname=name)[0]
            _set_link_sysctls(name, proc)
            # The reverse-path check drops whatever comes in on a link without an IPv4
            # address whenever rp_filter is on (net/ipv4/fib_frontend.c, "no_addr"): one.
            ipr.addr("add", index=index, address=str(LINK_ADDRESS), prefixlen=32, scope=253)
            ipr.link("set", index=index, state="up")
        done.links = len(changed) + len(set(wanted) - (set(held) - changed))
        # Neighbours: the next node's MAC behind the gateway addresses.
        for name, want in wanted.items():
            index = ipr.link_lookup(ifname=name)[0]
            mac = chain_mac(want.link.remote)
            for family, gateway in ((socket.AF_INET, GATEWAY_V4), (socket.AF_INET6, GATEWAY_V6)):
                entries = ipr.get_neighbours(family=family, ifindex=index, dst=str(gateway))
                if any(e.get_attr("NDA_LLADDR") == mac and e["state"] & NUD_PERMANENT for e in entries):
                    continue
                ipr.neigh("replace", dst=str(gateway), lladdr=mac, ifindex=index, state=NUD_PERMANENT)
                done.neighbours += 1
        new_routes = sorted(set(plan.routes) - routes, key=str)
        for route in new_routes:
            gateway = GATEWAY_V4 if route.dst.version == 4 else GATEWAY_V6
            ipr.route("replace", dst=str(route.dst), gateway=str(gateway), oif=ipr.link_lookup(ifname=route.link)[0],
                      table=route.table, proto=protocol, flags=4)  # RTNH_F_ONLINK
        new_rules = sorted(set(plan.rules) - rules, key=str)
        for rule in new_rules:
            _rule(ipr, "add", rule, mark, mask, protocol)
    done.routes = len(stale_routes) + len(new_routes)
    done.rules = len(stale_rules) + len(new_rules)
    done.peers = _apply_peers(plan.peers)
    return done


def _held_routes(ipr: IPRoute, wanted: Sequence[ChainRoute], protocol: int) -> tuple[set[ChainRoute],
                                                                                    list[ChainRoute]]:
    """flock's routes in the chain tables: (those the plan has, the stale ones)."""
    held, stale = set(), []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=None):
            table = msg.get_attr("RTA_TABLE")
            if table not in _TABLES or msg["proto"] != protocol:
                continue
            any_address = "0.0.0.0" if family == socket.AF_INET else "::"
            dst = ipaddress.ip_network(f"{msg.get_attr('RTA_DST') or any_address}/{msg['dst_len']}")
            oif = msg.get_attr("RTA_OIF")
            try:
                dev = socket.if_indextoname(oif) if oif else ""
            except OSError:
                dev = ""
            route = ChainRoute(table, dst, dev)
            gateway = str(GATEWAY_V4 if dst.version == 4 else GATEWAY_V6)
            if route in wanted and msg.get_attr("RTA_GATEWAY") == gateway:
                held.add(route)
            else:
                stale.append(route)
    return held, stale


def _held_rules(ipr: IPRoute, wanted: Sequence[ChainRule], protocol: int, mark: int,
                mask: int) -> tuple[set[ChainRule], list[tuple[ChainRule, int, int]]]:
    """flock's chain rules: (those the plan has, the stale ones with their mark and mask)."""
    held, stale = set(), []
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        for msg in ipr.get_rules(family=family):
            priority = msg.get_attr("FRA_PRIORITY")
            table = msg.get_attr("FRA_TABLE")
            if priority not in (RULE_PRIORITY_HOP, RULE_PRIORITY_FIRST) or table not in _TABLES \
                    or msg.get_attr("FRA_PROTOCOL") != protocol:
                continue
            rule = ChainRule(version, priority, msg.get_attr("FRA_IIFNAME"), table)
            held_mark, held_mask = msg.get_attr("FRA_FWMARK") or 0, msg.get_attr("FRA_FWMASK") or 0xFFFFFFFF
            if rule in wanted and (held_mark, held_mask) == (mark, mask):
                held.add(rule)
            else:
                stale.append((rule, held_mark, held_mask))
    return held, stale


def _rule(ipr: IPRoute, command: str, rule: ChainRule, mark: int, mask: int, protocol: int) -> None:
    spec: dict[str, Any] = {"family": socket.AF_INET if rule.version == 4 else socket.AF_INET6,
                            "priority": rule.priority, "table": rule.table, "fwmark": mark, "fwmask": mask,
                            "protocol": protocol, "action": "FR_ACT_TO_TBL"}
    if rule.iif:
        spec["iifname"] = rule.iif
    try:
        ipr.rule(command, **spec)
    except NetlinkError as exc:
        if not (command == "del" and exc.code == errno.ENOENT) and not (command == "add" and exc.code == errno.EEXIST):
            raise


def _apply_peers(peers: Sequence[IPAddress]) -> int:
    """The nftables sets of the ring's other nodes (VXLAN is taken only from them)."""
    written = 0
    for version in (4, 6):
        name = f"chain_peers_v{version}"
        try:
            listing = json.loads(nft(f"list set inet {TABLE} {name}", json_output=True))
        except NftFailed as exc:
            if exc.missing:  # no table, or one without daisy chaining's rules
                continue
            raise
        elements: list[Any] = next(
            (item["set"].get("elem", []) for item in listing.get("nftables", []) if "set" in item), [])
        have = sorted(str(element) for element in elements)
        want = sorted(str(p) for p in peers if p.version == version)
        if have == want:
            continue
        script = f"flush set inet {TABLE} {name}\n"
        if want:
            script += f"add element inet {TABLE} {name} {{ {', '.join(want)} }}\n"
        nft(script)
        written += 1
    return written


COUNTERS = {"chain_forwarded": "forwarded", "chain_reset": "reset", "chain_refused": "refused"}
"""flock's table's named counters of the chain: packets sent along it (from the fabric, or
passed on), packets that came along it and nobody owned (answered with a TCP reset), VXLAN
packets from a node outside the ring (dropped). ``nft list counters table inet flock``."""


def count_packets(listing: Mapping[str, Any]) -> dict[str, int]:
    """The chain's counters (see COUNTERS) in ``nft -j list counters table inet flock``'s
    output (or the table's); empty when the table has none (daisy chaining off)."""
    counts: dict[str, int] = {}
    for item in listing.get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("name") in COUNTERS:
            counts[COUNTERS[counter["name"]]] = int(counter.get("packets", 0))
    return counts


def _read_counters() -> dict[str, int]:
    try:
        return count_packets(json.loads(nft(f"list counters table inet {TABLE}", json_output=True)))
    except NftFailed as exc:
        if exc.missing:
            return {}
        raise


class DaisyChain:
    """The ring's links, neighbours, tables and rules in the node's netns (``hostNetns``)."""

    def __init__(self, *, port: int, protocol: int, mark: int, mask: int, host_netns: str | None,
                 proc: str = "/proc", timeout: float = 30.0) -> None:
        self.port = port
        self.protocol = protocol
        self.mark = mark
        self.mask = mask
        self.path = named_netns(host_netns) if host_netns else None
        self.proc = proc
        self.timeout = timeout

    async def counters(self) -> dict[str, int]:
        """Packets the chain forwarded, reset and refused since flock's table was made (see COUNTERS)."""
        try:
            return await in_netns(self.path, self.timeout, _read_counters)
        except NftFailed as exc:
            raise PinningError(f"daisy chain counters: nft: {exc.text.splitlines()[0] if exc.text else exc}") from exc
        except (OSError, TimeoutError, ValueError) as exc:
            raise PinningError(f"daisy chain counters: {getattr(exc, 'strerror', None) or exc}") from exc

    async def apply(self, plan: ChainPlan) -> ChainChanges:
        """Make the kernel hold ``plan`` (an empty plan: remove it all). Raises PinningError."""
        def call() -> ChainChanges:
            return _apply(plan, port=self.port, protocol=self.protocol, mark=self.mark, mask=self.mask,
                          proc=self.proc)
        try:
            return await in_netns(self.path, self.timeout, call)
        except NftFailed as exc:
            raise PinningError(f"daisy chain: nft: {exc.text.splitlines()[0] if exc.text else exc}") from exc
        except (NetlinkError, OSError, TimeoutError, ValueError) as exc:
            raise PinningError(f"daisy chain: {getattr(exc, 'strerror', None) or exc}") from exc
