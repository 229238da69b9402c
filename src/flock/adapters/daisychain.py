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


def _link_info(msg: Any) -> tuple[str, dict[str, Any]] | None:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return "vxlan", {name: value for name, value in (data["attrs"] if data else [])}


def _held_link(msg: Any) -> tuple[ChainLink, int, str] | None:
    """A flkdc link as (link, port, mac), None if it is not one of ours (or not VXLAN)."""
    info = _link_info(msg)
    if info is None:
        return None
    data = info[1]
    remote = data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6")
    if remote is None or "IFLA_VXLAN_ID" not in data:
        return None
    link = ChainLink(str(msg.get_attr("IFLA_IFNAME")), int(data["IFLA_VXLAN_ID"]), ipaddress.ip_address(remote))
    return link, int(data.get("IFLA_VXLAN_PORT", 0)), str(msg.get_attr("IFLA_ADDRESS"))


def _set_link_sysctls(name: str, proc: str) -> None:
    # Packets along the chain come in with the client's source address, which the node
    # routes elsewhere: loose reverse-path check on the link (the kernel takes the max of
    # "all" and the link's). No IPv6 address of its own: nothing but forwarded packets.
    sysctl.write(f"net/ipv4/conf/{name}/rp_filter", "2", proc)
    sysctl.write(f"net/ipv6/conf/{name}/addr_gen_mode", "1", proc, missing_ok=True)
    sysctl.write(f"net/ipv6/conf/{name}/accept_ra", "0", proc, missing_ok=True)


def _apply(plan: ChainPlan, *, port: int, protocol: int, mark: int, mask: int, proc: str) -> ChainChanges:
    done = ChainChanges()
    wanted_links = {link.name: link for link in plan.links}
    mac = chain_mac(plan.local) if plan.local is not None else ""
    with IPRoute() as ipr:
        held: dict[str, tuple[ChainLink, int, str, int]] = {}
        for msg in ipr.get_links():
            name = str(msg.get_attr("IFLA_IFNAME"))
            if not name.startswith(LINK_PREFIX):
                continue
            found = _held_link(msg)
            if found is None:
                continue
            held[name] = (*found, msg["index"])
        local_ok = _locals_match(ipr, held, plan.local)
        # Stale rules and routes go first, new ones come last: nothing is ever sent to a
        # table or a link that is not (or no longer) there.
        done.rules = _apply_rules(ipr, plan.rules, protocol, mark, mask, add=False)
        done.routes = _apply_routes(ipr, plan.routes, protocol, add=False)
        # Links: one that differs in any way is made again (a ring change: rare).
        for name, (link, link_port, link_mac, index) in held.items():
            if wanted_links.get(name) != link or link_port != port or link_mac != mac or not local_ok.get(name, True):
                ipr.link("del", index=index)
                done.links += 1
        for name, link in wanted_links.items():
            current = held.get(name)
            if current is not None and current[0] == link and current[1] == port and current[2] == mac \
                    and local_ok.get(name, True):
                continue
            assert plan.local is not None
            spec: dict[str, Any] = {"ifname": name, "kind": "vxlan", "vxlan_id": link.vni, "vxlan_port": port,
                                    "vxlan_learning": 0, "address": mac}
            if link.remote.version == 4:
                spec.update(vxlan_group=str(link.remote), vxlan_local=str(plan.local))
            else:
                spec.update(vxlan_group6=str(link.remote), vxlan_local6=str(plan.local))
            ipr.link("add", **spec)
            index = ipr.link_lookup(ifname=name)[0]
            _set_link_sysctls(name, proc)
            # The reverse-path check drops whatever comes in on a link without an IPv4
            # address whenever rp_filter is on (net/ipv4/fib_frontend.c, "no_addr"): one.
            ipr.addr("add", index=index, address=str(LINK_ADDRESS), prefixlen=32, scope=253)
            ipr.link("set", index=index, state="up")
            done.links += 1
        # Neighbours: the next node's MAC behind the gateway addresses.
        for name, link in wanted_links.items():
            index = ipr.link_lookup(ifname=name)[0]
            want = chain_mac(link.remote)
            for family, gateway in ((socket.AF_INET, GATEWAY_V4), (socket.AF_INET6, GATEWAY_V6)):
                entries = ipr.get_neighbours(family=family, ifindex=index, dst=str(gateway))
                if any(e.get_attr("NDA_LLADDR") == want and e["state"] & NUD_PERMANENT for e in entries):
                    continue
                ipr.neigh("replace", dst=str(gateway), lladdr=want, ifindex=index, state=NUD_PERMANENT)
                done.neighbours += 1
        done.routes += _apply_routes(ipr, plan.routes, protocol, add=True)
        done.rules += _apply_rules(ipr, plan.rules, protocol, mark, mask, add=True)
    done.peers = _apply_peers(plan.peers)
    return done


def _locals_match(ipr: IPRoute, held: dict[str, tuple[ChainLink, int, str, int]],
                  local: IPAddress | None) -> dict[str, bool]:
    """Whether each held link's local address is the plan's."""
    result = {}
    for name, (_link, _port, _mac, index) in held.items():
        msg = ipr.get_links(index)[0]
        info = _link_info(msg)
        data = info[1] if info else {}
        have = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        result[name] = local is not None and have is not None and ipaddress.ip_address(have) == local
    return result


def _apply_routes(ipr: IPRoute, routes: Sequence[ChainRoute], protocol: int, *, add: bool) -> int:
    written = 0
    wanted = set(routes)
    held: set[ChainRoute] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=None):
            table = msg.get_attr("RTA_TABLE")
            if table not in _TABLES or msg["proto"] != protocol:
                continue
            dst = ipaddress.ip_network(f"{msg.get_attr('RTA_DST') or ('0.0.0.0' if family == socket.AF_INET else '::')}"
                                       f"/{msg['dst_len']}")
            oif = msg.get_attr("RTA_OIF")
            try:
                dev = socket.if_indextoname(oif) if oif else ""
            except OSError:
                dev = ""
            gateway = msg.get_attr("RTA_GATEWAY")
            route = ChainRoute(table, dst, dev)
            expected = str(GATEWAY_V4 if dst.version == 4 else GATEWAY_V6)
            if route in wanted and gateway == expected:
                held.add(route)
                continue
            ipr.route("del", family=family, dst=str(dst), table=table, proto=protocol)
            written += 1
    for route in sorted(wanted - held, key=str) if add else ():
        gateway = GATEWAY_V4 if route.dst.version == 4 else GATEWAY_V6
        ipr.route("replace", dst=str(route.dst), gateway=str(gateway), oif=ipr.link_lookup(ifname=route.link)[0],
                  table=route.table, proto=protocol, flags=4)  # RTNH_F_ONLINK
        written += 1
    return written


def _apply_rules(ipr: IPRoute, rules: Sequence[ChainRule], protocol: int, mark: int, mask: int, *,
                 add: bool) -> int:
    written = 0
    wanted = set(rules)
    held: set[ChainRule] = set()
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        for msg in ipr.get_rules(family=family):
            priority = msg.get_attr("FRA_PRIORITY")
            table = msg.get_attr("FRA_TABLE")
            if priority not in (RULE_PRIORITY_HOP, RULE_PRIORITY_FIRST) or table not in _TABLES \
                    or msg.get_attr("FRA_PROTOCOL") != protocol:
                continue
            rule = ChainRule(version, priority, msg.get_attr("FRA_IIFNAME"), table)
            if rule in wanted and msg.get_attr("FRA_FWMARK") == mark and msg.get_attr("FRA_FWMASK") == mask:
                held.add(rule)
                continue
            _rule(ipr, "del", msg_rule=rule, protocol=protocol, mark=msg.get_attr("FRA_FWMARK") or 0,
                  mask=msg.get_attr("FRA_FWMASK") or 0xFFFFFFFF)
            written += 1
    for rule in sorted(wanted - held, key=str) if add else ():
        _rule(ipr, "add", msg_rule=rule, protocol=protocol, mark=mark, mask=mask)
        written += 1
    return written


def _rule(ipr: IPRoute, command: str, *, msg_rule: ChainRule, protocol: int, mark: int, mask: int) -> None:
    spec: dict[str, Any] = {"family": socket.AF_INET if msg_rule.version == 4 else socket.AF_INET6,
                            "priority": msg_rule.priority, "table": msg_rule.table, "fwmark": mark,
                            "fwmask": mask, "protocol": protocol, "action": "FR_ACT_TO_TBL"}
    if msg_rule.iif:
        spec["iifname"] = msg_rule.iif
    try:
        ipr.rule(command, **spec)
    except NetlinkError as exc:
        if not (command == "del" and exc.code == errno.ENOENT) and not (command == "add" and exc.code == errno.EEXIST):
            raise


def _apply_peers(peers: Sequence[IPAddress]) -> int:
    """The nftables sets of the ring's other nodes (VXLAN is taken only from them)."""
    written = 0
    try:
        listing = nft(f"list table inet {TABLE}")
    except NftFailed as exc:
        if exc.missing and not peers:
            return 0
        raise
    for version in (4, 6):
        name = f"chain_peers_v{version}"
        if f"set {name}" not in listing:
            continue
        want = sorted(str(p) for p in peers if p.version == version)
        have = _set_elements(listing, name)
        if have == want:
            continue
        script = f"flush set inet {TABLE} {name}\n"
        if want:
            script += f"add element inet {TABLE} {name} {{ {', '.join(want)} }}\n"
        nft(script)
        written += 1
    return written


def _set_elements(listing: str, name: str) -> list[str]:
    start = listing.find(f"set {name} {{")
    if start < 0:
        return []
    end = listing.find("}", listing.find("{", start) + 1)
    body = listing[start:end + 1]
    if "elements = {" not in body:
        return []
    inner = listing[listing.find("elements = {", start) + len("elements = {"):]
    inner = inner[:inner.find("}")]
    return sorted(item.strip() for item in inner.replace("\n", " ").split(",") if item.strip())


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
