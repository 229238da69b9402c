"""The agent side of CNI: the work behind each request flock-cni forwards (the socket is
flock.adapters.cnisocket).

ADD: validate, learn the pod's anycast IPs (annotation, pool policy), pick addresses,
write a *pending* allocation record (durable, before any plumbing), plumb the veth,
addresses and routes, then *commit* the record with its anycast list (which wakes the
reconciler). DEL: if the pod's veth is one of several next hops of an anycast route,
mark the record *releasing* and wait for a reconcile pass to take it out; then remove
the veth and answer (idempotent); the record goes once nothing of the pod is left (a
pinned pod's pin and conntrack entries go after the answer, see below). CHECK: compare
the pod's network with the record.

Requests are handled one at a time (one lock), so two ADDs never pick the same address
and the store never changes under a reconcile pass. What an ADD does under the lock is
bounded, so no pod keeps the others waiting for long: its API read is done before it
takes the lock, its anycast IPs are at most ``maxAnycastPerPod``, and its plumbing is
cut off after ``add_seconds``. A pending or releasing record
found at start-up is an ADD or DEL that was cut short (agent killed): it is finished
once the agent's passes run (the veth removed, the record released); the runtime
retries an ADD. So is an *unpinning* record (below).

GC (spec 1.1.0): release, as a DEL would, every allocation whose container the runtime
does not list in ``cni.dev/valid-attachments``. A container is matched by its id alone
(flock gives a container one interface), so a listed container keeps its allocation
whatever ifname the list gives. A runtime builds its list before it sends the GC, and
an ADD may land in between: so GC also keeps every allocation whose ADD arrived less
than ``gcGraceSeconds`` ago (plugin config, default 60 s; for records older than this
agent, the agent's start counts as their ADD). It keeps the placeholders of records
rebuilt without their container id (flock.core.recovery), whose container it cannot
tell, and it runs under the same lock as ADD and DEL, after the agent's start-up.

Connection pinning (flock.core.pinning): an ADD of a pod with anycast IPs gives it a free
slot, kept in its record from the start (the pending record), and pins it after the
plumbing and before the commit, so the pod's first routed connection is already
pinned. Its DEL, just before the veth goes, counts its pinned connections in one conntrack
dump (an AnycastDrained Event says how many the DEL cuts: counted after, those with a
packet in flight would already have met another pod's reset) and marks the record
*unpinning*; then it removes the veth and answers. Its pinned connections end with its
network, not before. After the answer a task of this server's (:meth:`CniServer.close`
waits for them) removes the pin (nftables element, rules, per-pod table: ~8 ms, an RCU
grace period among it) and deletes the slot's conntrack entries that dump found, then the
record: until then the record keeps the slot, addresses and veth name from new pods, so
nothing can be given a slot that old connections are still marked with. A start-up finds
an unpinning record and finishes it (a new dump finds the entries); a repeated DEL
succeeds at once, GC leaves it alone, and an ADD of the same container waits for it. A
pin that fails leaves the pod working, unpinned (logged); the agent's next start
(:meth:`CniServer.adopt_pins`) writes what is missing.

STATUS (spec 1.1.0): 0 once the agent can serve ADDs by itself: it knows the node's pod
CIDRs, has listed the node's pods once and finished its start-up, and has a free
address of each family; else error 50 saying which. An API server outage after that is
not reported: ADDs of the node's pods are served from the pod cache, and a STATUS error
on every node during a control-plane outage would mark them all NotReady at its end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from flock.core.annotation import ANNOTATION, parse_anycast
from flock.core.cnispec import (
    CONTAINER_UNKNOWN,
    INVALID_ENV,
    IO_FAILURE,
    MAX_GC_GRACE_SECONDS,
    NETWORK_STATE_DIFFERS,
    NO_ADDRESS_LEFT,
    PLUGIN_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    CniRequest,
    Interface,
    add_result,
    error_result,
    parse_request,
)
from flock.core.drain import SlotEntries
from flock.core.ipam import choose_address
from flock.core.model import (
    GATEWAYS,
    Allocation,
    AllocationState,
    ContainerID,
    IPAddress,
    IPNetwork,
    PodRef,
    host_ifname,
)
from flock.core.pinning import PinAdoption, PodPin, choose_slot, plan_slots, slot_mark, slot_table
from flock.core.pools import pool_rejection
from flock.core.ports import Allocations, DrainReport, NexthopRelease, Pinning, PodLookup, PodNetworks
from flock.core.recovery import PLACEHOLDER_PREFIX
from flock.core.settings import AgentConfig
from flock.errors import AddressesExhausted, CniError, PinningError, PlumbingError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CniServer:
    """CNI requests (as flock-cni forwards them) -> answers; one at a time under one lock.

    Every dependency is a port (flock.core.ports), passed in by the agent.
    """

    config: AgentConfig
    store: Allocations
    network: PodNetworks
    lookup_pod: PodLookup
    nexthops: NexthopRelease
    """Whether a pod's veth may go now: the reconciler takes it out of shared routes first."""
    pinning: Pinning
    """Connection pinning in the kernel (its ``slots`` is 0 when pinning is off)."""
    drain: DrainReport
    """Told when a pinned pod's network goes: reports the connections it cuts (AnycastDrained)."""
    pod_cidrs: tuple[IPNetwork, ...] | None = None  # None until known: ADD answers "try again later"
    add_seconds: float = 30.0
    """Longest an ADD's plumbing may hold the lock (every other request waits for it)."""
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last_given: dict[int, IPAddress] = {}
        self._started = self.clock()
        self._added_at: dict[ContainerID, float] = {}  # when each recent ADD arrived, oldest first
        self._recovered = False  # the agent's start-up is over (recover() ran)
        self._last_slot = 0  # the pinning slot given last (round robin)
        self._pinning_works = True  # False once adopting the kernel's pinning failed: ADDs pin nothing
        self._unpinned: set[ContainerID] = set()  # records with a slot whose pin failed
        self._cleanups: dict[ContainerID, asyncio.Task[None]] = {}  # DELs answered, pod being unpinned

    # --- requests ------------------------------------------------------------------------

    async def handle(self, env: Mapping[str, str], stdin: str) -> tuple[int, str]:
        """One CNI request -> (exit code, stdout JSON)."""
        version = SUPPORTED_VERSIONS[-1]
        try:
            request = parse_request(env, stdin)
            version = request.cni_version
            if request.command == "STATUS":  # not behind the lock: it must not wait for a slow ADD
                self._status()
                return 0, ""
            if request.command == "ADD":
                self._note_add(ContainerID(request.container_id))
                # The API read is outside the lock: a slow API delays this pod, not the others.
                anycast = await self._anycast_for(PodRef(request.pod_namespace, request.pod_name,
                                                         request.pod_uid))
                async with self._lock:
                    return 0, json.dumps(await self._add(request, anycast))
            async with self._lock:
                if request.command == "DEL":
                    await self._delete(request)
                    return 0, ""
                if request.command == "CHECK":
                    await self._check(request)
                    return 0, ""
                if request.command == "GC":
                    await self._gc(request)
                    return 0, ""
                return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
        except CniError as exc:
            logger.warning("CNI %s %s failed: %s %s", *_what(env), exc.msg, exc.details)
            return 1, json.dumps(error_result(version, exc))
        except Exception as exc:  # never let one request take the agent down
            logger.exception("CNI %s %s failed unexpectedly", *_what(env))
            return 1, json.dumps(error_result(version, CniError(IO_FAILURE, f"flock-agent: {exc}")))

    async def _add(self, request: CniRequest, anycast: tuple[IPAddress, ...]) -> dict[str, Any]:
        """The ADD's work under the lock. A failure leaves no record, veth or address behind."""
        if self.pod_cidrs is None:
            raise CniError(TRY_AGAIN_LATER, "flock-agent is starting: the node's pod CIDRs are not known yet")
        if not await self.network.netns_exists(request.netns):
            raise CniError(INVALID_ENV, f"CNI_NETNS {request.netns} does not exist")
        container = ContainerID(request.container_id)
        existing = self.store.get(container)
        if existing is not None and existing.state is AllocationState.COMMITTED:
            # A repeated ADD: answer with what the container already has, if it asks for that.
            await self._same_interface(request, existing)
            return self._result(request, existing, host_mac="", pod_mac="")
        if existing is not None:
            await self._release(existing)
            await self._cleaned_up(container)  # the record goes at its end: not over a new one

        pod = PodRef(request.pod_namespace, request.pod_name, request.pod_uid)
        pod_ips = self._choose_addresses()
        allocation = Allocation(container, pod, self._free_ifname(container), pod_ips, (), AllocationState.PENDING,
                                pin_slot=self._choose_slot(pod, anycast))
        await self.store.put(allocation)  # durable before any plumbing: a crash leaves a record
        try:
            async with asyncio.timeout(self.add_seconds):
                plumbed = await self.network.add(host_ifname=allocation.host_ifname, ifname=request.ifname,
                                                 pod_netns=request.netns, pod_ips=pod_ips, anycast=anycast)
        except (PlumbingError, TimeoutError) as exc:
            await self._release(allocation)
            raise CniError(IO_FAILURE, str(exc) or f"setting up the pod's network took over {self.add_seconds:.0f}s"
                           ) from exc
        await self._pin(allocation)  # before the commit: the reconciler routes the pod from then on
        committed = await self.store.commit(container, anycast)
        logger.info("pod plumbed pod=%s container=%s dev=%s ips=%s anycast=%s", pod, container[:12],
                    allocation.host_ifname, ",".join(map(str, pod_ips)), ",".join(map(str, anycast)) or "-")
        return self._result(request, committed, plumbed.host_mac, plumbed.pod_mac)

    async def _same_interface(self, request: CniRequest, allocation: Allocation) -> None:
        """A repeated ADD must name the container's interface: flock gives a container one."""
        try:
            have = await self.network.pod_ifname(host_ifname=allocation.host_ifname, pod_netns=request.netns)
        except PlumbingError as exc:
            raise CniError(IO_FAILURE, str(exc)) from exc
        if have == request.ifname:
            return
        where = f"interface {have}" if have else f"its veth {allocation.host_ifname}, not in {request.netns}"
        raise CniError(INVALID_ENV, f"container {request.container_id} already has flock's network on {where}; "
                       f"flock gives a container one interface, so no {request.ifname}")

    def _result(self, request: CniRequest, allocation: Allocation, host_mac: str, pod_mac: str) -> dict[str, Any]:
        return add_result(
            cni_version=request.cni_version,
            host=Interface(allocation.host_ifname, host_mac),
            pod=Interface(request.ifname, pod_mac, request.netns),
            pod_ips=allocation.pod_ips,
            gateways=GATEWAYS,
        )

    async def _anycast_for(self, pod: PodRef) -> tuple[IPAddress, ...]:
        """The pod's anycast IPs that pass the pool policy.

        What is left out is logged here; the reconciler reports it on the Pod (one
        AnycastRejected Event per problem), as it does for later edits of the annotation.
        """
        if not pod.name:
            return ()
        try:
            body = await self.lookup_pod(pod.namespace, pod.name)
        except Exception as exc:
            raise CniError(TRY_AGAIN_LATER, f"cannot read pod {pod} from the API to learn its anycast IPs: "
                           f"{exc or type(exc).__name__}") from exc
        if body is None:
            return ()
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        parsed = parse_anycast(annotations.get(ANNOTATION), self.config.max_anycast_per_pod)
        allowed = tuple(a for a in parsed.addresses
                        if pool_rejection(a, pod.namespace, self.config.anycast_pools) is None)
        left_out = parsed.error_count + parsed.excess + len(parsed.addresses) - len(allowed)
        if left_out:  # one line per pod, bounded: the reconciler posts the details on the Pod
            logger.warning("anycast left out pod=%s count=%d configured=%d: see the pod's AnycastRejected Event",
                           pod, left_out, len(allowed))
        return allowed

    def _choose_slot(self, pod: PodRef, anycast: tuple[IPAddress, ...]) -> int | None:
        """A free pinning slot for a pod with anycast IPs; None when it has none, pinning is
        off or broken, or every slot is taken (then its connections are not pinned)."""
        if not anycast or not self.pinning.slots or not self._pinning_works:
            return None
        used = {a.pin_slot for a in self.store.all() if a.pin_slot is not None}
        slot = choose_slot(used, self.pinning.slots, self._last_slot)
        if slot is None:
            logger.warning("connection pinning: every slot is taken, this pod's connections are not pinned "
                           "pod=%s slots=%d (datapath.markMask)", pod, self.pinning.slots)
            return None
        self._last_slot = slot
        return slot

    async def _pin(self, allocation: Allocation) -> None:
        pin = PodPin.of(allocation)
        if pin is None:
            return
        try:
            await self.pinning.pin(pin)
        except PinningError as exc:
            self._unpinned.add(allocation.container_id)
            logger.error("connection pinning failed, this pod's connections are not pinned (the agent's next "
                         "start retries) pod=%s dev=%s slot=%d: %s", allocation.pod, pin.host_ifname, pin.slot, exc)
            return
        logger.info("pod pinned pod=%s dev=%s slot=%d mark=0x%08x table=%d", allocation.pod, pin.host_ifname,
                    pin.slot, slot_mark(pin.slot, self.config.datapath.mark_mask), slot_table(pin.slot))

    async def _unpin(self, allocation: Allocation) -> None:
        pin = PodPin.of(allocation)
        self._unpinned.discard(allocation.container_id)
        if pin is None:
            return
        try:
            await self.pinning.unpin(pin)
        except PinningError as exc:  # the DEL goes on: the agent's next start removes what is left
            logger.warning("connection pinning: could not remove a pod's pin pod=%s dev=%s slot=%d: %s",
                           allocation.pod, pin.host_ifname, pin.slot, exc)
            return
        logger.info("pod unpinned pod=%s dev=%s slot=%d", allocation.pod, pin.host_ifname, pin.slot)

    def pinned_pods(self) -> int:
        """How many pods are pinned now (the ``flock_pinned_pods`` gauge)."""
        return sum(1 for a in self.store.all()
                   if a.pin_slot is not None and a.state is AllocationState.COMMITTED
                   and a.container_id not in self._unpinned)

    async def adopt_pins(self) -> None:
        """Start-up, before any request: give every pinned pod's record its slot (kept, taken
        from the kernel's map, or new) and make the kernel hold exactly those pins (nothing
        when pinning is off). Writes nothing when the kernel already holds them. A failure is
        logged, and the agent then runs without pinning."""
        async with self._lock:
            try:
                kernel = await self.pinning.kernel_slots()
                plan = plan_slots(self.store.all(), kernel, enabled=self.pinning.slots > 0,
                                  count=self.pinning.slots)
                for container in plan.changed:
                    record = self.store.get(container)
                    if record is not None:
                        await self.store.put(dataclasses.replace(record, pin_slot=plan.slots[container]))
                # An unpinning record's pod is gone (its DEL answered): its pin goes (recover()
                # deletes its conntrack entries, then the record, which keeps the slot till then).
                pins = [pin for a in self.store.all()
                        if a.state is not AllocationState.UNPINNING and (pin := PodPin.of(a)) is not None]
                done = await self.pinning.adopt(pins)
            except PinningError as exc:
                self._pinning_works = False
                logger.error("connection pinning is not working; pods run unpinned (their connections may be "
                             "reset when next hops change): %s", exc)
                return
            for container in plan.exhausted:
                logger.warning("connection pinning: every slot is taken, a pod's connections are not pinned "
                               "container=%s slots=%d", container[:12], self.pinning.slots)
            for problem in done.problems:
                logger.warning("connection pinning: %s", problem)
            used = [a.pin_slot for a in self.store.all() if a.pin_slot is not None]
            self._last_slot = max(used, default=0)
            if self.pinning.slots:
                logger.info("connection pinning adopted pods=%d adopted_from_kernel=%d writes=%d: %s", len(pins),
                            len(plan.adopted), done.writes, done)
            elif done.writes:
                logger.info("connection pinning is off: removed what a previous agent left: %s", done)

    async def repair_pins(self) -> PinAdoption | None:
        """Put back what the kernel lost of the pins the records say (a rule, a route, the
        map element or the whole table someone deleted; a pin that failed at ADD): adopting
        again writes only what differs. Run every resyncSeconds; None when pinning is off or
        not working."""
        if not self.pinning.slots or not self._pinning_works:
            return None
        async with self._lock:
            # As at start-up: every record's pin but an unpinning one's (its pod is gone).
            pins = [pin for a in self.store.all()
                    if a.state is not AllocationState.UNPINNING and (pin := PodPin.of(a)) is not None]
            try:
                done = await self.pinning.adopt(pins)
            except PinningError as exc:
                logger.warning("connection pinning: cannot check the pins: %s", exc)
                return None
            if not done.problems:
                self._unpinned.clear()
        if done.writes:
            logger.warning("connection pinning repaired what the kernel had lost pods=%d: %s", len(pins), done)
        for problem in done.problems:
            logger.warning("connection pinning: %s", problem)
        return done

    def _free_ifname(self, container: ContainerID) -> str:
        """The container's veth name, skipping names another container's record owns."""
        owned = {a.host_ifname for a in self.store.all() if a.container_id != container}
        return next(name for attempt in range(1000) if (name := host_ifname(container, attempt)) not in owned)

    def _choose_addresses(self, *, dry_run: bool = False) -> tuple[IPAddress, ...]:
        """One free address per family of the pod CIDRs (``dry_run``: without handing them out)."""
        assert self.pod_cidrs is not None
        used = {ip for allocation in self.store.all() for ip in allocation.pod_ips}
        chosen: list[IPAddress] = []
        for version in (4, 6):
            networks = [n for n in self.pod_cidrs if n.version == version]
            for network in networks:  # the first CIDR of the family with room
                try:
                    address = choose_address(network, used, self._last_given.get(version))
                except AddressesExhausted:
                    continue
                if not dry_run:
                    self._last_given[version] = address
                chosen.append(address)
                break
            else:
                if networks:
                    raise CniError(NO_ADDRESS_LEFT, f"no free IPv{version} address left in "
                                   f"{', '.join(map(str, networks))}")
        if not chosen:
            raise CniError(TRY_AGAIN_LATER, "this node has no pod CIDRs (podCIDRs / the Node's spec.podCIDRs)")
        return tuple(chosen)

    async def _delete(self, request: CniRequest) -> None:
        allocation = self.store.get(ContainerID(request.container_id))
        if allocation is None:
            # The container behind a record rebuilt without its id (flock.core.recovery) owns the
            # veth its id hashes to: its DEL releases that placeholder.
            allocation = self.store.get(ContainerID(PLACEHOLDER_PREFIX + host_ifname(request.container_id)))
        if allocation is None:
            # Unknown container, or a repeated DEL: make sure no veth of its is left, and
            # succeed. Never touch a veth whose name a live container's record owns.
            name = host_ifname(request.container_id)
            if not any(a.host_ifname == name for a in self.store.all()):
                await self._remove_veth(name)
            return
        if allocation.container_id in self._cleanups:  # a repeated DEL: its network is gone already
            return
        await self._release(allocation)
        logger.info("pod unplumbed pod=%s container=%s dev=%s", allocation.pod, request.container_id[:12],
                    allocation.host_ifname)

    async def _check(self, request: CniRequest) -> None:
        allocation = self.store.get(ContainerID(request.container_id))
        if allocation is None or allocation.state is not AllocationState.COMMITTED:
            raise CniError(CONTAINER_UNKNOWN, f"flock has no network for container {request.container_id}")
        if not await self.network.netns_exists(request.netns):
            raise CniError(INVALID_ENV, f"CNI_NETNS {request.netns} does not exist")
        try:
            problems = await self.network.check(host_ifname=allocation.host_ifname, ifname=request.ifname,
                                                pod_netns=request.netns, pod_ips=allocation.pod_ips,
                                                anycast=allocation.anycast)
        except PlumbingError as exc:
            raise CniError(IO_FAILURE, str(exc)) from exc
        if problems:
            raise CniError(NETWORK_STATE_DIFFERS, "; ".join(problems))

    def _note_add(self, container: ContainerID) -> None:
        """Remember when this ADD arrived (before its API read), for GC's grace."""
        now = self.clock()
        self._added_at.pop(container, None)
        self._added_at[container] = now
        while self._added_at:  # oldest first: forget what no grace reaches any more
            oldest, at = next(iter(self._added_at.items()))
            if now - at <= MAX_GC_GRACE_SECONDS:
                break
            del self._added_at[oldest]

    def _status(self) -> None:
        """STATUS: return if an ADD could be served now; else CniError 50 saying why not."""
        if self.pod_cidrs is None:
            raise CniError(PLUGIN_NOT_AVAILABLE, "flock-agent is starting: the node's pod CIDRs are not known yet")
        if not self._recovered:
            raise CniError(PLUGIN_NOT_AVAILABLE, "flock-agent is starting: it has not listed this node's pods "
                           "and finished its start-up yet")
        try:
            self._choose_addresses(dry_run=True)
        except CniError as exc:
            raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg) from exc

    async def _gc(self, request: CniRequest) -> None:
        """GC: release the allocations of containers the runtime no longer has (see the module doc)."""
        if not self._recovered:
            raise CniError(TRY_AGAIN_LATER, "flock-agent is starting: GC waits for its start-up to finish")
        valid = {attachment.container_id for attachment in request.valid_attachments}
        now = self.clock()
        stale = [a for a in self.store.all()
                 if a.container_id not in valid and not a.container_id.startswith(PLACEHOLDER_PREFIX)
                 and a.container_id not in self._cleanups  # released already: its DEL's cleanup runs
                 and now - self._added_at.get(a.container_id, self._started) >= request.gc_grace_seconds]
        failed: list[str] = []
        for allocation in stale:  # each one, whatever happens to the others (the spec asks so)
            try:
                await self._release(allocation)
            except Exception as exc:  # a StateError too: the next one is still tried
                failed.append(f"{allocation.container_id[:12]}: {exc.msg if isinstance(exc, CniError) else exc}")
                continue
            logger.warning("GC released a stale allocation pod=%s container=%s dev=%s ips=%s", allocation.pod,
                           allocation.container_id[:12], allocation.host_ifname,
                           ",".join(map(str, allocation.pod_ips)))
        if failed:
            raise CniError(TRY_AGAIN_LATER, f"GC released {len(stale) - len(failed)} of {len(stale)} stale "
                           f"allocations; {len(failed)} failed: {'; '.join(failed[:3])}")

    async def _release(self, allocation: Allocation) -> None:
        """Take a container's network away; returns once its veth is gone.

        Its record goes then too, or, for a pinned pod, once :meth:`_clean_up` (started here,
        not waited for) has removed its pin and conntrack entries."""
        if allocation.container_id in self._cleanups:  # its network is gone; the rest is under way
            return
        if self.nexthops.shares_route(allocation.host_ifname):
            # Deleting a veth that is one next hop of an IPv4 multipath route makes the
            # kernel drop the whole route, and every other replica's traffic with it. Take
            # the pod out of the route first (a DEL without a graceful termination before it).
            if allocation.state is AllocationState.COMMITTED:
                await self.store.put(dataclasses.replace(allocation, state=AllocationState.RELEASING))
            if not await self.nexthops.release(allocation.host_ifname):
                raise CniError(TRY_AGAIN_LATER, f"flock-agent is starting or stopping: pod {allocation.pod} "
                               "must leave its anycast route before its network goes; try again")
        if allocation.pin_slot is None or allocation.state is AllocationState.PENDING:
            # Nothing was routed to it through a pin (an ADD cut short is never routed).
            await self._remove_veth(allocation.host_ifname)
            await self._unpin(allocation)  # an ADD cut short after its pin
            await self.store.remove(allocation.container_id)
            return
        entries = None
        if allocation.state is not AllocationState.UNPINNING:
            # How many pinned connections are still open (the veth cuts them), or the end of
            # its drain: one Event, said once (an unpinning record is never counted again).
            entries = await self.drain.network_removing(allocation)
            allocation = dataclasses.replace(allocation, state=AllocationState.UNPINNING)
            await self.store.put(allocation)
        await self._remove_veth(allocation.host_ifname)
        self._cleanups[allocation.container_id] = asyncio.create_task(
            self._clean_up(allocation, entries), name=f"flock unpin {allocation.host_ifname}")

    async def _clean_up(self, allocation: Allocation, entries: SlotEntries | None) -> None:
        """After a pinned pod's DEL has answered: its pin, its slot's conntrack entries
        (``entries``, or a new dump when None), then its record, which kept them reserved."""
        container = allocation.container_id
        try:
            # After the veth: the pod's pinned connections keep reaching it until its network goes.
            await self._unpin(allocation)
            await self.drain.network_removed(allocation, entries)
            current = self.store.get(container)
            if current is not None and current.state is AllocationState.UNPINNING:
                await self.store.remove(container)
            logger.info("pod unpinned and forgotten pod=%s container=%s dev=%s slot=%s", allocation.pod,
                        container[:12], allocation.host_ifname, allocation.pin_slot)
        except Exception as exc:  # the record stays unpinning: a DEL or the agent's next start retries
            logger.error("could not finish a DEL's clean-up, the pod's slot and addresses stay reserved until "
                         "a repeated DEL or the agent's next start pod=%s container=%s: %s", allocation.pod,
                         container[:12], exc)
        finally:
            self._cleanups.pop(container, None)

    async def _cleaned_up(self, container: ContainerID) -> None:
        """Wait for the container's DEL clean-up, if one runs."""
        task = self._cleanups.get(container)
        if task is not None:
            await asyncio.shield(task)

    def cleanups(self) -> int:
        """DELs answered whose pod's pin and conntrack entries are still being removed."""
        return len(self._cleanups)

    async def close(self, seconds: float = 10.0) -> None:
        """The agent stops: wait for the DELs' clean-ups (at most ``seconds``; the next
        start finishes what is left, from the records)."""
        tasks = list(self._cleanups.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            logger.warning("stopping with %d DEL clean-ups unfinished; the next start finishes them", len(pending))

    async def _remove_veth(self, ifname: str) -> None:
        try:
            await self.network.delete(ifname)
        except PlumbingError as exc:
            raise CniError(TRY_AGAIN_LATER, str(exc)) from exc

    async def recover(self) -> None:
        """Release every unfinished allocation: ADDs and DELs cut short by an agent crash.

        The agent calls it once it has listed the node's pods: its start-up is over then
        (STATUS answers ready, GC runs)."""
        async with self._lock:
            await self._recover()
            self._recovered = True

    async def _recover(self) -> None:
        for allocation in self.store.all():
            if allocation.state is not AllocationState.COMMITTED:
                what = {AllocationState.PENDING: "an unfinished ADD", AllocationState.RELEASING: "an unfinished DEL",
                        AllocationState.UNPINNING: "the unfinished clean-up of a DEL"}[allocation.state]
                logger.warning("releasing %s container=%s pod=%s ips=%s slot=%s", what,
                               allocation.container_id[:12], allocation.pod, ",".join(map(str, allocation.pod_ips)),
                               allocation.pin_slot)
                try:
                    await self._release(allocation)
                except Exception as exc:  # one record must not keep the others, or the agent, from going on
                    logger.error("could not release container=%s: %s", allocation.container_id[:12], exc)


def _what(env: Mapping[str, str]) -> tuple[str, str]:
    """The command and container id of a request, bounded for a log line."""
    return env.get("CNI_COMMAND", "")[:16], env.get("CNI_CONTAINERID", "")[:80]
