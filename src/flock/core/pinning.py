"""Connection pinning, the pure part: slots, marks, tables, and what a node should hold.

A connection's first packet to an anycast address is routed by the anycast route (ECMP);
nftables saves the pod it went to in the connection's conntrack mark, and restores it into
the packet mark for every later packet of the original direction (never replies), and a
per-pod routing table sends such packets to that pod whatever the anycast route says now
(measured in shared/notes/drain.md: 30/30 connections kept through their next hop's
removal). So taking a pod out of the next-hop set stops new flows only.

Each pinned pod gets a *slot* s (1 .. :func:`slot_count`): its mark is ``s`` shifted into
``markMask`` (:func:`slot_mark`), its routing table is ``PIN_TABLE_BASE + s``
(:func:`slot_table`), and one ``ip rule fwmark <mark>/<markMask> lookup <table>`` of
priority :data:`PIN_RULE_PRIORITY` per family of the pod's addresses leads there. The
slot is kept in the pod's allocation record; :func:`plan_slots` decides at start-up which
record keeps, adopts (from what the kernel holds) or gets which slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, IPNetwork

DEFAULT_MARK_MASK = 0x0FF00000
"""Bits 20-27: 255 slots. Clear of kube-proxy (0x4000 masquerade, 0x8000 drop), Istio
(0x539 and its 0xfff connmark range), Cilium's "magic" nibble (0x0f00), AWS VPC CNI's
connmark (0x80) and WireGuard tools such as Tailscale (0x00ff0000). Calico and Cilium's
identity bits (upper 16) belong to other CNIs, which do not run beside flock."""
KUBE_PROXY_BITS = 0xC000
"""kube-proxy's masquerade (0x4000) and drop (0x8000) marks: a mask may never touch them."""
MASK_BITS = (4, 12)
"""A mask has 4-12 contiguous bits: 15-4095 slots. The nftables table holds two one-rule
chains per slot (see flock.adapters.pinning), so 12 bits is the sensible top."""
PIN_TABLE_BASE = 1_000_000
"""Per-pod routing tables are ``PIN_TABLE_BASE + slot``: 1000001-1004095 (``ip route show
table 1000007`` is slot 7's). Far from main (254), local (255), default (253) and the
ranges other tools use (Calico 1-250, Cilium 2004/2005, Tailscale 52)."""
PIN_RULE_PRIORITY = 1000
"""Priority of flock's ``ip rule``\\ s: after ``local`` (0), before ``main`` (32766)."""
SKIP_RULE_PRIORITY = 999
"""``fwmark 0/<mask> goto RULES_END_PRIORITY``: a packet without a flock mark (nearly all of
them) skips flock's rules (one per pinned pod, and daisy chaining's) in one step; the
kernel walks rules one by one, twice per forwarded packet under strict rp_filter
(bench/forwarding.py)."""
RULES_END_PRIORITY = 1003
"""A ``nop`` rule after flock's: the skip rule's target, so rules of others after it are
still walked."""


def mask_problem(mask: int) -> str | None:
    """Why ``mask`` cannot be ``datapath.markMask``, or None if it can."""
    if not 0 < mask <= 0xFFFFFFFF:
        return "must be a 32-bit mark mask, not 0"
    shift = (mask & -mask).bit_length() - 1
    bits = mask >> shift
    if bits & (bits + 1):
        return f"0x{mask:08x} must be contiguous bits"
    width = bits.bit_length()
    if not MASK_BITS[0] <= width <= MASK_BITS[1]:
        return f"0x{mask:08x} has {width} bits; it must have {MASK_BITS[0]}-{MASK_BITS[1]}"
    if mask & KUBE_PROXY_BITS:
        return f"0x{mask:08x} overlaps kube-proxy's marks 0x{KUBE_PROXY_BITS:04x}"
    return None


def _shift(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def slot_count(mask: int) -> int:
    """How many slots ``mask`` holds (slot 0 is "not pinned")."""
    return mask >> _shift(mask)


def slot_mark(slot: int, mask: int) -> int:
    """The mark of ``slot`` inside ``mask``."""
    return slot << _shift(mask)


def chain_mark(mask: int) -> int:
    """The mark of daisy chaining (flock.core.daisychain): the mask's top slot, which no pod
    gets while daisy chaining is on."""
    return slot_mark(slot_count(mask), mask)


def slot_of_mark(mark: int, mask: int) -> int:
    """The slot a (conntrack or packet) mark carries in ``mask``; 0 for none."""
    return (mark & mask) >> _shift(mask)


def slot_table(slot: int) -> int:
    """The routing table of ``slot``."""
    return PIN_TABLE_BASE + slot


def table_slot(table: int, mask: int) -> int | None:
    """The slot whose table ``table`` is, None if it is not a pinning table of ``mask``'s."""
    slot = table - PIN_TABLE_BASE
    return slot if 1 <= slot <= slot_count(mask) else None


def wants_slot(allocation: Allocation) -> bool:
    """Whether a record's pod should be pinned: a committed pod with anycast IPs."""
    return bool(allocation.anycast) and allocation.state is AllocationState.COMMITTED


def keeps_slot(allocation: Allocation) -> bool:
    """Whether a record keeps the slot it has: a pinned pod until its DEL is over."""
    return bool(allocation.anycast) and allocation.state is not AllocationState.PENDING


def choose_slot(used: Collection[int], count: int, last: int = 0) -> int | None:
    """The first free slot after ``last`` (wrapping), None when all ``count`` are taken.

    Round robin like the IPAM, so a slot just freed is reused as late as possible: a
    connection still marked with it (its pod is gone) then rarely meets a new pod.
    """
    for offset in range(count):
        slot = (last + offset) % count + 1
        if slot not in used:
            return slot
    return None


@dataclasses.dataclass(frozen=True)
class PodPin:
    """What the kernel holds for one pinned pod."""

    slot: int
    host_ifname: str
    pod_ips: tuple[IPAddress, ...]
    """The pod's addresses: the per-pod table routes the anycast pools via them (one per family)."""

    @classmethod
    def of(cls, allocation: Allocation) -> PodPin | None:
        if allocation.pin_slot is None:
            return None
        return cls(allocation.pin_slot, allocation.host_ifname, allocation.pod_ips)


@dataclasses.dataclass(frozen=True)
class PinRoute:
    """One route of a per-pod table: ``<pool> via <pod ip> dev <veth> onlink table <N>``."""

    table: int
    dst: IPNetwork
    via: IPAddress
    dev: str

    def __str__(self) -> str:
        return f"{self.dst} via {self.via} dev {self.dev} onlink table {self.table}"


@dataclasses.dataclass(frozen=True)
class PinRule:
    """One ``ip rule``: ``fwmark <mark>/<mask> lookup <table>``, of one family."""

    version: int  # 4 or 6
    mark: int
    mask: int
    table: int

    def __str__(self) -> str:
        return (f"ip -{self.version} rule pref {PIN_RULE_PRIORITY} fwmark 0x{self.mark:x}/0x{self.mask:x} "
                f"lookup {self.table}")


def pin_routes(pin: PodPin, pools: Sequence[IPNetwork]) -> list[PinRoute]:
    """The routes of a pod's table: every anycast pool of a family the pod has an address of."""
    routes = []
    for pool in pools:
        via = next((ip for ip in pin.pod_ips if ip.version == pool.version), None)
        if via is not None:
            routes.append(PinRoute(slot_table(pin.slot), pool, via, pin.host_ifname))
    return routes


def pin_rules(pin: PodPin, mask: int) -> list[PinRule]:
    """A pod's rules: one per family of its addresses."""
    versions = sorted({ip.version for ip in pin.pod_ips})
    return [PinRule(version, slot_mark(pin.slot, mask), mask, slot_table(pin.slot)) for version in versions]


@dataclasses.dataclass(frozen=True)
class SlotPlan:
    """Start-up: the slot each record should have, and which records change."""

    slots: Mapping[ContainerID, int | None]
    """Every record's slot (None: not pinned)."""
    changed: tuple[ContainerID, ...]
    """Records whose slot differs from what they hold: written back before pinning."""
    adopted: tuple[ContainerID, ...]
    """Of those, records that took the slot the kernel's map gives their veth."""
    exhausted: tuple[ContainerID, ...]
    """Records that want a slot and found none free."""


def plan_slots(records: Sequence[Allocation], kernel: Mapping[str, int], *, enabled: bool,
               count: int) -> SlotPlan:
    """Which slot each record keeps or gets at start-up.

    ``kernel``: the slot the kernel's nftables map gives each veth (from a previous agent).
    A record that has a valid slot no other record claimed keeps it; one without (written
    before pinning existed, or rebuilt from the kernel by flock.core.recovery) takes its
    veth's slot from ``kernel`` when that is free, so its pod's pinned connections stay
    pinned; the rest get free slots. Disabled: no record has a slot.
    """
    slots: dict[ContainerID, int | None] = {}
    used: set[int] = set()
    wanting: list[Allocation] = []
    ordered = sorted(records, key=lambda a: a.container_id)
    for allocation in ordered:
        slot = allocation.pin_slot
        if enabled and keeps_slot(allocation) and slot is not None and 1 <= slot <= count and slot not in used:
            slots[allocation.container_id] = slot
            used.add(slot)
        else:
            slots[allocation.container_id] = None
            if enabled and wants_slot(allocation):
                wanting.append(allocation)
    adopted = []
    rest = []
    for allocation in wanting:
        slot = kernel.get(allocation.host_ifname)
        if slot is not None and 1 <= slot <= count and slot not in used:
            slots[allocation.container_id] = slot
            used.add(slot)
            adopted.append(allocation.container_id)
        else:
            rest.append(allocation)
    exhausted = []
    last = 0
    for allocation in rest:
        slot = choose_slot(used, count, last)
        if slot is None:
            exhausted.append(allocation.container_id)
            continue
        slots[allocation.container_id] = last = slot
        used.add(slot)
    changed = tuple(a.container_id for a in ordered if slots[a.container_id] != a.pin_slot)
    return SlotPlan(slots=slots, changed=changed, adopted=tuple(adopted), exhausted=tuple(exhausted))


@dataclasses.dataclass
class PinAdoption:
    """What adopting the kernel's pinning at start-up changed (all zero: nothing was written)."""

    table_written: bool = False
    elements_added: int = 0
    elements_removed: int = 0
    rules_added: int = 0
    rules_removed: int = 0
    routes_written: int = 0
    routes_removed: int = 0
    rules_added_skip: int = 0
    rules_removed_skip: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def writes(self) -> int:
        return (int(self.table_written) + self.elements_added + self.elements_removed + self.rules_added
                + self.rules_removed + self.routes_written + self.routes_removed + self.rules_added_skip
                + self.rules_removed_skip)

    def __str__(self) -> str:
        return (f"table {'written' if self.table_written else 'kept'}, elements +{self.elements_added}"
                f"/-{self.elements_removed}, rules +{self.rules_added}/-{self.rules_removed}, routes "
                f"+{self.routes_written}/-{self.routes_removed}")
