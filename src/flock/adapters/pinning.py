"""Connection pinning in the node's kernel: flock's nftables table, its ``ip rule``\\ s and
its per-pod routing tables (the pure part, slots and marks: flock.core.pinning).

The nftables table ``inet flock`` (README "Connection pinning")::

    set anycast_v4, anycast_v6    the anycast pools: only traffic to them is pinned
    map pod_slot                  host veth -> goto save_slot_<N>   (one element per pinned pod)
    map slot_restore              mark of slot N -> goto restore_slot_<N>   (static)
    chain prerouting  (filter, mangle)   forwarded traffic: restore a pinned connection's mark
    chain output      (route, mangle)    the node's own traffic: the same (a route chain re-routes)
    chain postrouting (filter, mangle)   a connection's first packet: save the veth it leaves by
    chain restore_slot_<N>   meta mark set meta mark & ~mask | mark(N)
    chain save_slot_<N>      ct mark set ct mark & ~mask | mark(N)

Only packets of the original direction (client -> pod), TCP and UDP, to an anycast
pool's address are touched: a pod's replies must never be steered back to it. Marks are
set as ``(mark & ~mask) | value``, so other tools' bits (kube-proxy's 0x4000 ...) stay as
they were. nftables cannot OR a register into a mark (nft 1.0.6: "Right hand side of
binary operation (|) must be constant"), so each slot has its two one-rule chains, made
once with the table; a pod then costs one map element, added at CNI ADD and deleted at
DEL, never a reload of the table. 255 slots (the default mask) load in ~10 ms, 4095 in
~160 ms, once.

Through libnftables (Debian's libnftables1, which the ``nftables`` package brings with the
``nft`` CLI), called with ctypes on a thread inside the node's netns, rather than the
``nft`` executable: no process per pod (an element costs ~0.5 ms, ``nft -f -`` ~3 ms more
for fork and exec), errors come back as nft's own text, and the netns is the calling
thread's (libnftables opens its netlink socket there), as for every other kernel write of
the agent. Deleting an element costs ~7 ms either way (the kernel waits for an RCU grace
period).

Rules and routes go through raw rtnetlink (:class:`flock.adapters.rtnetlink.RtnlSocket`,
the FIB-rule encoding below): per pod, up to two rules and two routes in one batch.
Everything flock writes carries its ``routeProtocol`` (rules: FRA_PROTOCOL, kernel 4.17+),
lives in its own table range and rule priority, so flock never touches another's.

Start-up (:meth:`PinningTable.adopt`) reads what the kernel holds and writes only what
differs: an agent restart with nothing changed makes no netlink or nft write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import hashlib
import ipaddress
import json
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from flock.adapters import rtnetlink as rtnl
from flock.adapters import sysctl
from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.core.daisychain import LAST_STOP_LINK, LINK_PREFIX
from flock.core.model import VETH_PREFIX, IPNetwork
from flock.core.pinning import (
    MASK_BITS,
    PIN_RULE_PRIORITY,
    PIN_TABLE_BASE,
    RULES_END_PRIORITY,
    SKIP_RULE_PRIORITY,
    PinAdoption,
    PinRoute,
    PinRule,
    PodPin,
    chain_mark,
    pin_routes,
    pin_rules,
    slot_count,
    slot_mark,
)
from flock.errors import PinningError

logger = logging.getLogger(__name__)

T = TypeVar("T")

TABLE: Final = "flock"
"""The nftables table: ``nft list table inet flock``."""
_ALL_TABLES: Final = range(PIN_TABLE_BASE + 1, PIN_TABLE_BASE + (1 << MASK_BITS[1]))
"""Every table any mask could give a slot: stale ones are removed whatever the mask is now."""

# linux/rtnetlink.h, linux/fib_rules.h
RTM_NEWRULE: Final = 32
RTM_DELRULE: Final = 33
RTM_GETRULE: Final = 34
FR_ACT_TO_TBL: Final = 1
FR_ACT_GOTO: Final = 2
FR_ACT_NOP: Final = 3
FRA_GOTO: Final = 4
FRA_PRIORITY: Final = 6
FRA_FWMARK: Final = 10
FRA_TABLE: Final = 15
FRA_FWMASK: Final = 16
FRA_PROTOCOL: Final = 21
FIB_RULE_HDR: Final = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2, action, flags
_FAMILY: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION: Final = {socket.AF_INET: 4, socket.AF_INET6: 6}


# -- libnftables ----------------------------------------------------------------------

_NFT_CTX_OUTPUT_JSON: Final = 1 << 4
_lib: ctypes.CDLL | None = None


def _libnftables() -> ctypes.CDLL:
    """libnftables.so.1 with the prototypes flock calls (loaded once). Raises PinningError."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise PinningError(f"libnftables is missing ({exc}): install Debian's nftables package "
                               "(libnftables1), or set datapath.connectionPinning to false") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
    return _lib


class NftFailed(Exception):
    """nft refused a command; ``text`` is its error output."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def missing(self) -> bool:
        """The object named does not exist (ENOENT)."""
        return "No such file or directory" in self.text

    @property
    def exists(self) -> bool:
        return "File exists" in self.text


def nft(commands: str, *, json_output: bool = False) -> str:
    """Run nft ``commands`` (one transaction) in this thread's netns: nft's output.

    Raises NftFailed with nft's error text, PinningError when libnftables is missing.
    """
    lib = _libnftables()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftFailed("nft_ctx_new failed")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if json_output:
            lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
        code = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    finally:
        lib.nft_ctx_free(ctx)
    if code != 0:
        raise NftFailed(error.strip() or f"nft failed ({code})")
    return output


# -- the table ------------------------------------------------------------------------

def collapsed(pools: Iterable[IPNetwork], version: int) -> list[IPNetwork]:
    """The pools of one family, merged (an interval set refuses overlapping elements)."""
    if version == 4:
        return list(ipaddress.collapse_addresses(p for p in pools if isinstance(p, ipaddress.IPv4Network)))
    return list(ipaddress.collapse_addresses(p for p in pools if isinstance(p, ipaddress.IPv6Network)))


def save_chain(slot: int) -> str:
    return f"save_slot_{slot}"


def restore_chain(slot: int) -> str:
    return f"restore_slot_{slot}"


def _elements(networks: Sequence[IPNetwork]) -> str:
    return f" elements = {{ {', '.join(map(str, networks))} }};" if networks else ""


@dataclasses.dataclass(frozen=True)
class ChainRules:
    """Daisy chaining's part of the table (flock.core.daisychain): its VXLAN port and the
    mark that sends a packet along the chain."""

    port: int
    mark: int


def _chain_lines(mask: int, keep: int, chain: ChainRules) -> tuple[list[str], list[str]]:
    """(rules appended to prerouting, chains of their own) for daisy chaining."""
    m = f"0x{mask:08x}"
    links = f'"{LINK_PREFIX}*"'
    mark = f"0x{chain.mark:08x}"
    prerouting = [f"\t\tiifname {links} jump chain_from_ring comment \"came along the daisy chain\""]
    for where in ("ip daddr @anycast_v4", "ip6 daddr @anycast_v6"):
        # Cheapest and most selective first: most packets are not TCP or not a new entry.
        prerouting.append(
            f"\t\tmeta l4proto tcp ct state new ct mark and {m} == 0 tcp flags & syn == 0 {where} "
            f"iifname != \"{LAST_STOP_LINK}\" meta mark set meta mark and 0x{keep:08x} or {mark} "
            "counter name \"chain_forwarded\" comment \"mid-flow, and no pod here has it: along the daisy chain\"")
    from_ring = [
        "\tchain chain_from_ring {",
        "\t\tmeta l4proto != tcp drop comment \"along the chain: TCP only\"",
        "\t\ttcp flags & syn == syn drop comment \"along the chain: never a new connection\"",
        "\t\tmeta nfproto ipv4 ip daddr != @anycast_v4 drop comment \"along the chain: anycast only\"",
        "\t\tmeta nfproto ipv6 ip6 daddr != @anycast_v6 drop comment \"along the chain: anycast only\"",
        "\t}",
    ]
    port = chain.port
    chains = [
        "\tcounter chain_forwarded { comment \"mid-flow packets sent along the daisy chain\"; }",
        "\tcounter chain_reset { comment \"came along the chain, nobody had them: a TCP reset\"; }",
        "\tcounter chain_refused { comment \"VXLAN to the ring's port from no member: dropped\"; }",
        "\tset chain_peers_v4 { type ipv4_addr; comment \"the ring's other nodes\"; }",
        "\tset chain_peers_v6 { type ipv6_addr; comment \"the ring's other nodes\"; }",
        "\tchain chain_in {",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        f"\t\tudp dport {port} ip saddr @chain_peers_v4 notrack accept comment \"the ring's VXLAN: untracked\"",
        f"\t\tudp dport {port} ip6 saddr @chain_peers_v6 notrack accept comment \"the ring's VXLAN: untracked\"",
        f"\t\tudp dport {port} fib daddr type local counter name \"chain_refused\" drop "
        "comment \"VXLAN to the ring's port from no member\"",
        "\t}",
        "\tchain chain_out {",
        "\t\ttype route hook output priority raw; policy accept;",
        f"\t\tudp dport {port} ip daddr @chain_peers_v4 notrack comment \"the ring's VXLAN: untracked\"",
        f"\t\tudp dport {port} ip6 daddr @chain_peers_v6 notrack comment \"the ring's VXLAN: untracked\"",
        "\t}",
        *from_ring,
        "\tchain chain_forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\tiifname {links} jump chain_forward_from_ring comment \"came along the daisy chain\"",
        "\t}",
        "\tchain chain_forward_from_ring {",
        f"\t\toifname {links} accept comment \"along the chain\"",
        f"\t\toifname \"{VETH_PREFIX}*\" accept comment \"to the pod that has it\"",
        "\t\tmeta l4proto tcp counter name \"chain_reset\" reject with tcp reset "
        "comment \"nobody has it: a reset, not a loop\"",
        "\t\tdrop",
        "\t}",
    ]
    return prerouting, chains


def static_table(mask: int, pools: Sequence[IPNetwork], chain: ChainRules | None = None) -> str:
    """The table's text without the pods' elements (its fingerprint goes in a comment)."""
    keep = 0xFFFFFFFF & ~mask
    count = slot_count(mask)
    m = f"0x{mask:08x}"
    restore = ", ".join(f"0x{slot_mark(s, mask):08x} : goto {restore_chain(s)}" for s in range(1, count + 1))
    match = "ct direction original meta l4proto { tcp, udp }"
    lines = [
        f"\tset anycast_v4 {{ type ipv4_addr; flags interval; comment \"anycastPools, IPv4\";"
        f"{_elements(collapsed(pools, 4))} }}",
        f"\tset anycast_v6 {{ type ipv6_addr; flags interval; comment \"anycastPools, IPv6\";"
        f"{_elements(collapsed(pools, 6))} }}",
        "\tmap pod_slot { type ifname : verdict; comment \"a pinned pod's host veth -> its slot\"; }",
        f"\tmap slot_restore {{ type mark : verdict; comment \"FINGERPRINT\"; elements = {{ {restore} }}; }}",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
    ]
    for where in ("ip daddr @anycast_v4", "ip6 daddr @anycast_v6"):
        lines.append(f"\t\t{match} ct mark and {m} != 0 {where} ct mark and {m} vmap @slot_restore "
                     "comment \"a pinned connection: to its pod\"")
    chain_prerouting, chain_chains = _chain_lines(mask, keep, chain) if chain is not None else ([], [])
    lines += chain_prerouting
    lines += ["\t}", "\tchain output {", "\t\ttype route hook output priority mangle; policy accept;"]
    for where in ("ip daddr @anycast_v4", "ip6 daddr @anycast_v6"):
        lines.append(f"\t\t{match} ct mark and {m} != 0 {where} ct mark and {m} vmap @slot_restore "
                     "comment \"a pinned connection from this node: to its pod\"")
    lines += ["\t}", "\tchain postrouting {", "\t\ttype filter hook postrouting priority mangle; policy accept;"]
    for where in ("ip daddr @anycast_v4", "ip6 daddr @anycast_v6"):
        lines.append(f"\t\t{match} ct mark and {m} == 0 {where} oifname vmap @pod_slot "
                     "comment \"a new connection: pin it to the pod it goes to\"")
    lines.append("\t}")
    lines += chain_chains
    for slot in range(1, count + 1):
        mark = f"0x{slot_mark(slot, mask):08x}"
        lines.append(f"\tchain {restore_chain(slot)} {{ meta mark set meta mark and 0x{keep:08x} or {mark}; }}")
        lines.append(f"\tchain {save_chain(slot)} {{ ct mark set ct mark and 0x{keep:08x} or {mark}; }}")
    body = "\n".join(lines)
    fingerprint = "flock " + hashlib.sha256(body.encode()).hexdigest()[:16]
    return body.replace("FINGERPRINT", fingerprint)


def fingerprint(static: str) -> str:
    """The fingerprint :func:`static_table` wrote into ``slot_restore``'s comment."""
    start = static.index('comment "flock ') + len('comment "')
    return static[start:static.index('"', start)]


def element(pin: PodPin) -> str:
    return f'"{pin.host_ifname}" : goto {save_chain(pin.slot)}'


def table_script(mask: int, pools: Sequence[IPNetwork], pins: Sequence[PodPin],
                 chain: ChainRules | None = None) -> str:
    """One atomic transaction that replaces flock's table (whatever it held) with the wanted one."""
    static = static_table(mask, pools, chain)
    elements = ""
    if pins:
        elements = f"add element inet {TABLE} pod_slot {{ {', '.join(element(p) for p in pins)} }}\n"
    return (f"add table inet {TABLE}\ndelete table inet {TABLE}\n"
            f"table inet {TABLE} {{\n{static}\n}}\n{elements}")


@dataclasses.dataclass(frozen=True)
class KernelTable:
    """What ``nft -j list table inet flock`` shows, as far as flock compares it."""

    fingerprint: str
    chains: frozenset[str]
    rules: dict[str, int]  # base chain -> rule count
    pods: dict[str, int]  # pod_slot: veth -> slot


_SAVE_PREFIX: Final = "save_slot_"


def parse_listing(text: str) -> KernelTable:
    """Parse nft's JSON listing of the table. Raises ValueError if it is not one."""
    data: Any = json.loads(text)
    fingerprint_ = ""
    chains: set[str] = set()
    rules: dict[str, int] = {}
    pods: dict[str, int] = {}
    for item in data.get("nftables", []):
        if "map" in item:
            found = item["map"]
            if found.get("name") == "slot_restore":
                fingerprint_ = str(found.get("comment", ""))
            elif found.get("name") == "pod_slot":
                for key, verdict in found.get("elem", []):
                    target = str((verdict.get("goto") or {}).get("target", ""))
                    if target.startswith(_SAVE_PREFIX) and target[len(_SAVE_PREFIX):].isdigit():
                        pods[str(key)] = int(target[len(_SAVE_PREFIX):])
        elif "chain" in item:
            chains.add(str(item["chain"]["name"]))
        elif "rule" in item:
            chain = str(item["rule"]["chain"])
            rules[chain] = rules.get(chain, 0) + 1
    return KernelTable(fingerprint_, frozenset(chains), rules, pods)


def table_matches(kernel: KernelTable, mask: int, static: str) -> bool:
    """Whether the kernel's table is the one ``static`` describes (its fingerprint, its chains,
    each chain's rule count): else it is replaced whole."""
    wanted = _rule_counts(static)
    return (kernel.fingerprint == fingerprint(static) and kernel.chains == frozenset(wanted)
            and all(kernel.rules.get(chain, 0) == n for chain, n in wanted.items()))


def _rule_counts(static: str) -> dict[str, int]:
    """Each chain of :func:`static_table`'s text and its number of rules."""
    counts: dict[str, int] = {}
    chain = None
    for line in static.splitlines():
        text = line.strip()
        if text.startswith("chain "):
            chain = text.split()[1]
            counts[chain] = 0
            if text.endswith("}"):  # a one-line chain: its one rule
                counts[chain] = 1
                chain = None
        elif text == "}":
            chain = None
        elif chain is not None and not text.startswith("type "):
            counts[chain] += 1
    return counts


def _list_table() -> KernelTable | None:
    try:
        return parse_listing(nft(f"list table inet {TABLE}", json_output=True))
    except NftFailed as exc:
        if exc.missing:
            return None
        raise


# -- rules and routes (rtnetlink) ------------------------------------------------------

def _attr(kind: int, value: bytes) -> bytes:
    return rtnl.RTATTR.pack(4 + len(value), kind) + value + b"\0" * (rtnl.align4(len(value)) - len(value))


def rule_request(rule: PinRule, protocol: int) -> bytes:
    """The payload of an RTM_NEWRULE / RTM_DELRULE for ``rule`` (priority PIN_RULE_PRIORITY)."""
    return (FIB_RULE_HDR.pack(_FAMILY[rule.version], 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0)
            + _attr(FRA_PRIORITY, rtnl.U32.pack(PIN_RULE_PRIORITY))
            + _attr(FRA_FWMARK, rtnl.U32.pack(rule.mark)) + _attr(FRA_FWMASK, rtnl.U32.pack(rule.mask))
            + _attr(FRA_TABLE, rtnl.U32.pack(rule.table)) + _attr(FRA_PROTOCOL, bytes([protocol])))


def pin_route_request(route: PinRoute, protocol: int, index: int) -> bytes:
    """The payload of an RTM_NEWROUTE for ``route`` (onlink, through link ``index``)."""
    size = 4 if route.dst.version == 4 else 16
    return (rtnl.RTMSG.pack(_FAMILY[route.dst.version], route.dst.prefixlen, 0, 0, 0, protocol,
                            rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST, rtnl.RTNH_F_ONLINK)
            + _attr(rtnl.RTA_DST, route.dst.network_address.packed[:size])
            + _attr(rtnl.RTA_GATEWAY, route.via.packed) + _attr(rtnl.RTA_OIF, rtnl.U32.pack(index))
            + _attr(rtnl.RTA_TABLE, rtnl.U32.pack(route.table)))


def pin_route_delete(route: PinRoute, protocol: int) -> bytes:
    """The payload of an RTM_DELROUTE for ``route``'s destination in its table, of ``protocol`` only."""
    return (rtnl.RTMSG.pack(_FAMILY[route.dst.version], route.dst.prefixlen, 0, 0, 0, protocol,
                            rtnl.RT_SCOPE_NOWHERE, 0, 0)
            + _attr(rtnl.RTA_DST, route.dst.network_address.packed)
            + _attr(rtnl.RTA_TABLE, rtnl.U32.pack(route.table)))


SkipRule = tuple[int, int, int, int, int]
"""(version, priority, action, fwmark, goto target) of one of the rules around flock's."""


def skip_rules(mask: int) -> set[SkipRule]:
    """The rules that let a packet without a flock mark skip flock's (see SKIP_RULE_PRIORITY)."""
    return {rule for version in (4, 6) for rule in (
        (version, SKIP_RULE_PRIORITY, FR_ACT_GOTO, mask, RULES_END_PRIORITY),
        (version, RULES_END_PRIORITY, FR_ACT_NOP, 0, 0))}


def skip_rule_request(rule: SkipRule, protocol: int) -> bytes:
    version, priority, action, mask, target = rule
    payload = (FIB_RULE_HDR.pack(_FAMILY[version], 0, 0, 0, 0, 0, 0, action, 0)
               + _attr(FRA_PRIORITY, rtnl.U32.pack(priority)) + _attr(FRA_PROTOCOL, bytes([protocol])))
    if action == FR_ACT_GOTO:
        payload += (_attr(FRA_FWMARK, rtnl.U32.pack(0)) + _attr(FRA_FWMASK, rtnl.U32.pack(mask))
                    + _attr(FRA_GOTO, rtnl.U32.pack(target)))
    return payload


def _dump_rules(sock: rtnl.RtnlSocket, protocol: int) -> tuple[list[PinRule], set[SkipRule]]:
    """flock's rules of ``protocol``, in one dump: the pods' (priority PIN_RULE_PRIORITY, a
    table of the range) and the skip rule with its target (see :func:`skip_rules`)."""
    pins, skips = [], set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind, payload in sock.dump(RTM_GETRULE, FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            if kind != RTM_NEWRULE or len(payload) < FIB_RULE_HDR.size:
                continue
            fam, *_, table, _r1, _r2, action, _flags = FIB_RULE_HDR.unpack_from(payload, 0)
            attrs = rtnl.attributes(payload, FIB_RULE_HDR.size, len(payload))
            rule_protocol = payload[attrs[FRA_PROTOCOL][0]] if FRA_PROTOCOL in attrs else 0
            priority = rtnl.u32(payload, attrs[FRA_PRIORITY]) if FRA_PRIORITY in attrs else 0
            if rule_protocol != protocol:
                continue
            if FRA_TABLE in attrs:
                table = rtnl.u32(payload, attrs[FRA_TABLE])
            mark = rtnl.u32(payload, attrs[FRA_FWMARK]) if FRA_FWMARK in attrs else 0
            mask = rtnl.u32(payload, attrs[FRA_FWMASK]) if FRA_FWMASK in attrs else 0xFFFFFFFF
            if priority == PIN_RULE_PRIORITY and action == FR_ACT_TO_TBL and table in _ALL_TABLES:
                pins.append(PinRule(_VERSION[fam], mark, mask, table))
            elif priority in (SKIP_RULE_PRIORITY, RULES_END_PRIORITY):
                target = rtnl.u32(payload, attrs[FRA_GOTO]) if FRA_GOTO in attrs else 0
                skips.add((_VERSION[fam], priority, action, mask if action == FR_ACT_GOTO else 0, target))
    return pins, skips


def _dump_routes(sock: rtnl.RtnlSocket, protocol: int) -> list[tuple[PinRoute, bool]]:
    """flock's routes in the pinning tables: (route, onlink). The dev is the link's name."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind, payload in sock.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            if kind != rtnl.RTM_NEWROUTE:
                continue
            fam, dst_len, _src, table, route_protocol, _type, flags, attrs = rtnl.route(payload, 0, len(payload))
            if route_protocol != protocol or table not in _ALL_TABLES or rtnl.RTA_GATEWAY not in attrs:
                continue
            size = 4 if fam == socket.AF_INET else 16
            start, end = attrs.get(rtnl.RTA_DST, (0, 0))
            dst_raw = bytes(payload[start:end]) or bytes(size)
            gateway = rtnl.address(bytes(payload[slice(*attrs[rtnl.RTA_GATEWAY])]))
            index = rtnl.u32(payload, attrs[rtnl.RTA_OIF]) if rtnl.RTA_OIF in attrs else 0
            try:
                dev = socket.if_indextoname(index)
            except OSError:
                dev = f"#{index}"
            dst = ipaddress.ip_network((rtnl.address(dst_raw), dst_len), strict=False)
            found.append((PinRoute(table, dst, gateway, dev), bool(flags & rtnl.RTNH_F_ONLINK)))
    return found


def _errors(what: Sequence[str], answers: Sequence[int | None], ok: Iterable[int]) -> list[str]:
    allowed = set(ok)
    problems = []
    for item, answer in zip(what, answers, strict=True):
        if answer is None:
            problems.append(f"{item}: no answer from the kernel")
        elif answer and answer not in allowed:
            problems.append(f"{item}: {rtnl.describe_errno(answer)}")
    return problems


def _write_pin(pin: PodPin, mask: int, pools: Sequence[IPNetwork], protocol: int, timeout: float) -> None:
    """Routes, then rules, then the map element: a connection is marked only once its
    rule and table lead to the pod. Idempotent."""
    index = socket.if_nametoindex(pin.host_ifname)
    routes = pin_routes(pin, pools)
    rules = pin_rules(pin, mask)
    create = rtnl.NLM_F_CREATE
    requests = [(rtnl.RTM_NEWROUTE, create | rtnl.NLM_F_REPLACE, pin_route_request(r, protocol, index))
                for r in routes]
    requests += [(RTM_NEWRULE, create | rtnl.NLM_F_EXCL, rule_request(r, protocol)) for r in rules]
    with rtnl.RtnlSocket(timeout) as sock:
        answers = sock.transact(requests)
    problems = _errors([f"route {r}" for r in routes] + [str(r) for r in rules], answers, (errno.EEXIST,))
    if problems:
        raise PinningError("; ".join(problems))
    _add_element(pin)


def _add_element(pin: PodPin) -> None:
    add = f"add element inet {TABLE} pod_slot {{ {element(pin)} }}"
    try:
        nft(add)
    except NftFailed as exc:
        if not exc.exists:
            raise
        # The veth has an element already (a DEL cut short, a slot changed): replace it.
        nft(f'delete element inet {TABLE} pod_slot {{ "{pin.host_ifname}" }}\n{add}')


def _remove_pin(pin: PodPin, mask: int, pools: Sequence[IPNetwork], protocol: int, timeout: float) -> list[str]:
    """The map element first (no new connection is marked), then the rules and routes.
    What was already gone is fine. Returns problems."""
    problems = []
    try:
        nft(f'delete element inet {TABLE} pod_slot {{ "{pin.host_ifname}" }}')
    except NftFailed as exc:
        if not exc.missing:
            problems.append(f"delete {pin.host_ifname}'s element: {exc.text.splitlines()[0]}")
    rules = pin_rules(pin, mask)
    routes = pin_routes(pin, pools)
    with rtnl.RtnlSocket(timeout) as sock:
        answers = sock.transact([(RTM_DELRULE, 0, rule_request(r, protocol)) for r in rules]
                                + [(rtnl.RTM_DELROUTE, 0, pin_route_delete(r, protocol)) for r in routes])
    problems += _errors([f"delete {r}" for r in rules] + [f"delete route {r}" for r in routes], answers,
                        (errno.ENOENT, errno.ESRCH))
    return problems


def _adopt(pins: Sequence[PodPin], *, enabled: bool, mask: int, pools: Sequence[IPNetwork], protocol: int,
           proc: str, timeout: float, chain: ChainRules | None = None) -> PinAdoption:
    done = PinAdoption()
    kernel = _list_table()
    if enabled:
        # Marks must be part of the reverse-path check (net.ipv4.conf.all.src_valid_mark).
        key = "net/ipv4/conf/all/src_valid_mark"
        try:
            with open(f"{proc}/sys/{key}") as file:
                if file.read().strip() != "1":
                    sysctl.write(key, "1", proc)
        except OSError as exc:
            done.problems.append(f"set {key}=1: {exc.strerror or exc}")
        static = static_table(mask, pools, chain)
        if kernel is None or not table_matches(kernel, mask, static):
            nft(table_script(mask, pools, pins, chain))
            done.table_written = True
            done.elements_added = len(pins)
        else:
            wanted = {p.host_ifname: p.slot for p in pins}
            stale = sorted(name for name, slot in kernel.pods.items() if wanted.get(name) != slot)
            if stale:
                quoted = ", ".join(f'"{name}"' for name in stale)
                nft(f"delete element inet {TABLE} pod_slot {{ {quoted} }}")
                done.elements_removed = len(stale)
            missing = [p for p in pins if kernel.pods.get(p.host_ifname) != p.slot]
            if missing:
                nft(f"add element inet {TABLE} pod_slot {{ {', '.join(element(p) for p in missing)} }}")
                done.elements_added = len(missing)
    elif kernel is not None:
        nft(f"delete table inet {TABLE}")
        done.table_written = True

    wanted_rules = {rule for pin in pins for rule in pin_rules(pin, mask)} if enabled else set()
    wanted_routes = {route for pin in pins for route in pin_routes(pin, pools)} if enabled else set()
    wanted_skips = skip_rules(mask) if enabled else set()
    with rtnl.RtnlSocket(timeout) as sock:
        rules, skips = _dump_rules(sock, protocol)
        # The skip rule goes first and comes last, its target the other way round.
        stale_skips = sorted(skips - wanted_skips, key=lambda r: r[1])
        new_skips = sorted(wanted_skips - skips, key=lambda r: -r[1])
        skip_requests: list[rtnl.Request] = [(RTM_DELRULE, 0, skip_rule_request(r, protocol)) for r in stale_skips]
        skip_requests += [(RTM_NEWRULE, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, skip_rule_request(r, protocol))
                          for r in new_skips]
        if skip_requests:
            done.problems += _errors([f"skip rule {r}" for r in stale_skips + new_skips], sock.transact(skip_requests),
                                     (errno.EEXIST, errno.ENOENT))
        done.rules_removed_skip, done.rules_added_skip = len(stale_skips), len(new_skips)
        routes = _dump_routes(sock, protocol)
        have_rules = set(rules)
        have_routes = {route for route, onlink in routes if onlink}
        # Stale first (a slot's rule of another family or mask), then what is missing.
        stale_rules = [r for r in rules if r not in wanted_rules]
        stale_routes = [r for r, _ in routes if r not in wanted_routes]
        new_rules = sorted(wanted_rules - have_rules, key=str)
        new_routes = sorted(wanted_routes - have_routes, key=str)
        requests: list[rtnl.Request] = [(RTM_DELRULE, 0, rule_request(r, protocol)) for r in stale_rules]
        requests += [(rtnl.RTM_DELROUTE, 0, pin_route_delete(r, protocol)) for r in stale_routes]
        names = [f"delete {r}" for r in stale_rules] + [f"delete route {r}" for r in stale_routes]
        for route in new_routes:
            try:
                index = socket.if_nametoindex(route.dev)
            except OSError:
                done.problems.append(f"route {route}: no link {route.dev}")
                continue
            requests.append((rtnl.RTM_NEWROUTE, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                             pin_route_request(route, protocol, index)))
            names.append(f"route {route}")
            done.routes_written += 1
        requests += [(RTM_NEWRULE, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, rule_request(r, protocol))
                     for r in new_rules]
        names += [str(r) for r in new_rules]
        answers = sock.transact(requests) if requests else []
    done.rules_removed, done.routes_removed, done.rules_added = len(stale_rules), len(stale_routes), len(new_rules)
    done.problems += _errors(names, answers, (errno.EEXIST, errno.ENOENT, errno.ESRCH))
    return done


def _read_slots() -> dict[str, int]:
    kernel = _list_table()
    return dict(kernel.pods) if kernel is not None else {}


class PinningTable:
    """flock's connection pinning in the node's netns (``hostNetns`` when set)."""

    def __init__(self, *, enabled: bool, mask: int, pools: Sequence[IPNetwork], protocol: int,
                 host_netns: str | None, proc: str = "/proc", timeout: float = 30.0,
                 chain_port: int | None = None) -> None:
        self.enabled = enabled
        # Daisy chaining takes the mask's top slot as its mark (flock.core.pinning.chain_mark).
        self.chain = ChainRules(chain_port, chain_mark(mask)) if enabled and chain_port is not None else None
        self.mask = mask
        self.pools = tuple(collapsed(pools, 4) + collapsed(pools, 6))
        self.protocol = protocol
        self.host_netns = host_netns
        self.path = named_netns(host_netns) if host_netns else None
        self.proc = proc
        self.timeout = timeout

    @property
    def slots(self) -> int:
        """How many pods can be pinned at once (0 when pinning is off)."""
        if not self.enabled:
            return 0
        return slot_count(self.mask) - (1 if self.chain is not None else 0)

    async def kernel_slots(self) -> dict[str, int]:
        """The slot the kernel's ``pod_slot`` map gives each veth (a previous agent's pins)."""
        if not self.enabled:
            return {}
        return await self._run("read flock's nftables table", _read_slots)

    async def adopt(self, pins: Sequence[PodPin]) -> PinAdoption:
        """Make the kernel hold exactly ``pins`` (none when pinning is off): the table, the
        rules and the per-pod routes; write only what differs, remove what is stale."""
        return await self._run("adopt connection pinning", _adopt, pins, enabled=self.enabled, mask=self.mask,
                               pools=self.pools, protocol=self.protocol, proc=self.proc, timeout=self.timeout,
                               chain=self.chain)

    async def pin(self, pin: PodPin) -> None:
        """Pin a pod's new connections to it (at CNI ADD, before it is routed). Raises PinningError."""
        await self._run(f"pin {pin.host_ifname} to slot {pin.slot}", _write_pin, pin, self.mask, self.pools,
                        self.protocol, self.timeout)

    async def unpin(self, pin: PodPin) -> None:
        """Remove a pod's pin (at CNI DEL, once its veth is gone). Raises PinningError."""
        problems = await self._run(f"unpin {pin.host_ifname} (slot {pin.slot})", _remove_pin, pin, self.mask,
                                   self.pools, self.protocol, self.timeout)
        if problems:
            raise PinningError(f"unpin {pin.host_ifname} (slot {pin.slot}): {'; '.join(problems)}")

    async def _run(self, what: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def call() -> T:
            return func(*args, **kwargs)
        try:
            return await in_netns(self.path, self.timeout, call)
        except PinningError as exc:
            raise PinningError(f"{what}: {exc}") from exc
        except NftFailed as exc:
            raise PinningError(f"{what}: nft: {exc.text.splitlines()[0] if exc.text else exc}") from exc
        except (OSError, TimeoutError, ValueError) as exc:
            detail = "timed out" if isinstance(exc, TimeoutError) else (
                getattr(exc, "strerror", None) or str(exc))
            raise PinningError(f"{what}: {detail}") from exc
