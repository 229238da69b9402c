"""The reconcile task: one asyncio task that makes the kernel and BIRD match the pods.

Every kernel edit and every BIRD reload happens here, serialized. BIRD learns flock's
advertised routes from the kernel (``protocol kernel`` with ``learn``, see
``bird/_protocols.j2``), so installing a route *is* advertising its prefix, and bird.conf
changes only with the peers, pools and pod CIDRs: it is applied once at start-up (and
retried while BIRD refuses it), never per pod. A pass:

1. resolve committed allocations × eligible pods into the desired anycast routes;
2. install and change routes (tagged ``routeProtocol``: BIRD advertises them at once,
   never before the node can forward);
3. withdraw the routes no longer wanted by re-tagging them ``withdrawnRouteProtocol``:
   BIRD withdraws the prefix while the kernel keeps forwarding what the fabric already
   sent (no reload: one netlink write);
4. delete withdrawn routes whose ``withdrawnLingerSeconds`` are over;
5. post Events for what changed for a person.

The kernel view is a full dump at start-up and every ``resync_seconds`` (repairs routes
deleted or altered by hand); between dumps it is what this task itself wrote, so a quiet
tick costs no netlink traffic at all. Wake-ups coalesce: many triggers while a pass runs
cause one more pass, not many.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

from flock.core.annotation import ANNOTATION
from flock.core.model import (
    Allocation,
    AllocationState,
    ContainerID,
    Event,
    IPAddress,
    Nexthops,
    ObjectRef,
    PodRef,
    PodStatus,
    address_sort_key,
    host_prefix,
)
from flock.core.podcache import PodCache
from flock.core.ports import Allocations, Bird, EventSink, RenderBird, Routes
from flock.core.resolver import (
    Contribution,
    DesiredRoutes,
    Finding,
    PoolPolicy,
    Resolution,
    contribution,
    findings,
    matching_status,
)
from flock.core.routediff import (
    DeleteRoute,
    KernelRoutes,
    ReplaceRoute,
    RouteEdit,
    WithdrawRoute,
    apply_edits,
    diff_routes,
    expired,
)
from flock.core.settings import AgentConfig
from flock.errors import BirdConfigRejected, BirdError
from flock.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Reconciler:
    """The reconcile task; also the node's answer to "may this veth go?" (a NexthopRelease)."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        store: Allocations,
        pods: PodCache,
        routes: Routes,
        bird: Bird,
        render_bird: RenderBird,
        events: EventSink,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.store = store
        self.pods = pods
        self.routes = routes
        self.bird = bird
        self.render_bird = render_bird
        self.events = events
        self.metrics = metrics
        self._wakeup = asyncio.Event()
        self._triggers: set[str] = set()
        self._waiting: list[asyncio.Future[None]] = []  # callers of next_pass
        self._kernel = KernelRoutes()
        self._lingering: dict[IPAddress, float] = {}  # withdrawn route -> monotonic time to delete it
        self._bird_configured = False  # BIRD took (or already ran) this agent's bird.conf
        self._serving: dict[PodRef, frozenset[IPAddress]] = {}
        self._serving_last_resort: dict[PodRef, frozenset[IPAddress]] = {}  # of _serving: as last resort
        self._reported: set[Finding] = set()
        self._bird_failure = RepeatedFailure("BIRD reload failed, the previous config stays live")
        self._route_failures: set[tuple[str, int | None]] = set()  # RouteError.key of the last failures
        self._last_resync = 0.0
        self.holding = False
        """While True (a new agent before its first full pod LIST), passes keep the routes the
        kernel had at :meth:`adopt` (repairing drift) and change nothing else: an empty pod
        cache must not withdraw what the previous agent routed."""
        self._held: dict[IPAddress, Nexthops] = {}
        self._running = False
        self._burst_until = 0.0  # monotonic time until which wake-ups are gathered (see _pass_forever)
        self._pools = PoolPolicy(config.anycast_pools)
        self._contributions: dict[ContainerID, tuple[Allocation, PodStatus | None, Contribution | None]] = {}
        self._desired = DesiredRoutes()  # the routes of the contributions above
        self._serving_of: dict[PodRef, frozenset[IPAddress]] = {}  # what the contributions route to each pod
        self._changed_pods: set[PodRef] = set()  # pods whose contribution was computed again this pass
        # Addresses whose route may differ from the kernel's; None: any (a full diff is due:
        # at start-up, and after the kernel view was taken again).
        self._dirty: set[IPAddress] | None = None
        self._touched: set[IPAddress] | None = None  # addresses whose route or advertisement changed (None: any)
        self._settled = False  # the last pass finished all it set out to do: a quiet tick may skip
        self._errors_this_pass = 0
        self.passes = 0
        self.last_pass_ok = 0.0  # monotonic time of the last pass that finished (for /healthz)

    # --- triggers -------------------------------------------------------------------------

    def wake(self, trigger: str) -> None:
        """Ask for a pass as soon as possible. Cheap; many calls coalesce into one pass."""
        self._triggers.add(trigger)
        self._wakeup.set()

    async def next_pass(self, trigger: str) -> None:
        """Wake the reconciler; return once a pass that started after this call has ended.

        Only :meth:`run` ends such passes: bound the wait with a timeout.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self.wake(trigger)
        await done

    def shares_route(self, dev: str) -> bool:
        """Whether ``dev`` and a pod that stays (committed) are next hops of one route of flock's.

        The route as last written or seen; a pod whose DEL is also under way does not count.
        """
        staying = {a.host_ifname for a in self.store.all()
                   if a.state is AllocationState.COMMITTED and a.host_ifname != dev}
        return any(any(hop.dev == dev for hop in hops) and any(hop.dev in staying for hop in hops)
                   for hops in self._kernel.advertised.values())

    def next_hop_devs(self) -> set[str]:
        """The veths that are next hops of flock's routes, advertised or withdrawn (a withdrawn
        route forwards until its linger ends): as last written or seen."""
        return {hop.dev for table in (self._kernel.advertised, self._kernel.withdrawn)
                for hops in table.values() for hop in hops}

    async def release(self, dev: str) -> bool:
        """Wait until no route shares ``dev`` with a pod that stays. False: passes do not run
        (yet), or hold (before the first pod LIST): the caller tries again later."""
        limit = self.config.bird.timeout_seconds + 5  # a pass may wait for one BIRD reload
        try:
            async with asyncio.timeout(limit):
                while self.shares_route(dev):
                    if not self._running or self.holding:
                        return False
                    await self.next_pass("cni-del")
        except TimeoutError:
            logger.warning("%s is still one of several next hops after %.0fs; deleting it anyway", dev, limit)
        return True

    async def run(self) -> None:
        """Forever: wait for a wake-up or the tick, then reconcile. Cancel to stop.

        Nothing here waits for the API server: the pod cache is what the watch and the
        agent's re-lists last said, so passes (and /healthz) go on through an API outage.
        """
        self._running = True
        try:
            await self._pass_forever()
        finally:
            self._running = False
            for done in self._waiting:  # no pass will come: let next_pass callers look again
                if not done.done():
                    done.set_result(None)

    async def _pass_forever(self) -> None:
        while True:
            timeout = self.config.tick_seconds
            if self._lingering and not self.holding:  # wake when the first linger ends
                timeout = min(timeout, max(0.0, min(self._lingering.values()) - time.monotonic()) + 0.001)
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                self._triggers.add("linger" if self._linger_over() else "tick")
            else:
                # A wake-up right after a pass that did work belongs to a burst (many pods
                # changing at once): gather it until BURST_SECONDS after that pass instead
                # of running a pass per event. A lone event, the usual withdrawal, waits
                # for nothing.
                gather = self._burst_until - time.monotonic()
                if gather > 0:
                    await asyncio.sleep(gather)
            self._wakeup.clear()
            triggers, self._triggers = self._triggers, set()
            waiting, self._waiting = self._waiting, []
            full = time.monotonic() - self._last_resync >= self.config.resync_seconds
            try:
                await self.reconcile(full_view=full, trigger=",".join(sorted(triggers)))
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad pass must not stop routing for every other pod: log, retry next tick.
                logger.exception("reconcile pass failed; retrying on the next tick")
            finally:
                for done in waiting:
                    if not done.done():
                        done.set_result(None)

    # --- start-up ------------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over what a previous agent left: the kernel routes and who they serve.

        Restarting the agent with unchanged state then writes nothing and posts no Events.
        """
        self._track(await self.routes.dump())
        self._held = dict(self._kernel.advertised)
        self._last_resync = time.monotonic()
        by_dev = {a.host_ifname: a for a in self.store.all()}
        serving: dict[PodRef, set[IPAddress]] = {}
        for address, nexthops in self._kernel.advertised.items():
            for hop in nexthops:
                allocation = by_dev.get(hop.dev)
                if allocation is not None:
                    serving.setdefault(allocation.pod, set()).add(address)
        self._serving = {pod: frozenset(addresses) for pod, addresses in serving.items()}
        logger.info("adopted kernel state routes=%d withdrawn=%d pods=%d", len(self._kernel.advertised),
                    len(self._kernel.withdrawn), len(self._serving))

    # --- one pass ------------------------------------------------------------------------

    async def reconcile(self, *, full_view: bool = False, trigger: str = "manual") -> None:
        started = time.monotonic()
        self._touched = set()
        drifted = await self._resync_kernel() if full_view else False
        if trigger == "tick" and self._settled and not drifted and not self.holding and not self._linger_over():
            # Nothing changed since a pass that finished all it set out to do (every other
            # change wakes the reconciler with a trigger of its own): the same inputs would
            # give no edit, the same bird.conf and no Event. A quiet tick costs nothing.
            self._passed(started, trigger)
            return
        self._settled = False
        self._errors_this_pass = 0

        if self.holding:
            # Put back what was routed at start-up if it drifted; route and withdraw nothing.
            await self._apply([e for e in diff_routes(self._held, self._kernel) if isinstance(e, ReplaceRoute)])
            self._passed(started, trigger)
            return

        await self._configure_bird()
        pods = self.pods.snapshot()
        resolution, changed = self._resolve(pods)
        dirty, self._dirty = self._dirty, set()
        edits = diff_routes(resolution.routes, self._kernel, None if dirty is None else dirty | changed,
                            last_resort=resolution.last_resort)

        # 1. Install and change routes: BIRD learns and advertises exactly what they route.
        await self._apply([e for e in edits if isinstance(e, ReplaceRoute)])

        # 2. Withdraw first, delete later: a re-tagged route leaves BGP and keeps forwarding.
        await self._withdraw([e for e in edits if isinstance(e, WithdrawRoute)])

        # 3. Delete the withdrawn routes whose linger is over.
        await self._apply(expired(self._lingering, time.monotonic()))

        self._post_events(resolution.serving, resolution.findings, pods)
        if self._errors_this_pass == 0:
            self._route_failures = set()
        self._settled = self._errors_this_pass == 0 and self._bird_failure.current is None
        if trigger != "tick":
            self._burst_until = time.monotonic() + BURST_SECONDS
        self._passed(started, trigger)

    def _resolve(self, pods: Mapping[tuple[str, str], PodStatus]) -> tuple[Resolution, set[IPAddress]]:
        """:func:`~flock.core.resolver.resolve`, at the cost of what changed: an allocation's
        contribution is computed again only if the allocation or its pod's status changed
        since the last pass (those pods are noted in ``_changed_pods``), and only the routes
        it touches are combined again. Also returns the addresses whose desired route changed."""
        fresh: dict[ContainerID, tuple[Allocation, PodStatus | None, Contribution | None]] = {}
        changed_pods: set[PodRef] = set()
        for allocation in self.store.all():
            status = matching_status(allocation, pods)
            known = self._contributions.get(allocation.container_id)
            if known is not None and known[0] == allocation and known[1] == status:
                fresh[allocation.container_id] = known
                continue
            part = contribution(allocation, status, self._pools)
            fresh[allocation.container_id] = (allocation, status, part)
            changed_pods.add(allocation.pod)
            self._desired.update(known[2] if known is not None else None, part)
        for cid, known in self._contributions.items():
            if cid not in fresh:
                changed_pods.add(known[0].pod)
                self._desired.update(known[2], None)
        changed = self._desired.settle()
        self._contributions, self._changed_pods = fresh, changed_pods
        parts = [part for _, _, part in fresh.values() if part is not None]
        if changed_pods:  # who serves what: again for the pods that changed
            serving: dict[PodRef, set[IPAddress]] = {pod: set() for pod in changed_pods}
            for part in parts:
                if part.pod in serving:
                    serving[part.pod].update(address for address, _ in part.hops + part.fallback)
            for pod, addresses in serving.items():
                if addresses:
                    self._serving_of[pod] = frozenset(addresses)
                else:
                    self._serving_of.pop(pod, None)
        return Resolution(routes=self._desired.routes, serving=self._serving_of,
                          last_resort=frozenset(self._desired.last_resort),
                          findings=findings(part for part in parts if part.problems or part.unlisted)), changed

    def _passed(self, started: float, trigger: str) -> None:
        self.metrics.anycast_routes.set(len(self._kernel.advertised))
        self.metrics.withdrawn_routes.set(len(self._kernel.withdrawn))
        self.metrics.anycast_nexthops.set(sum(len(h) for h in self._kernel.advertised.values()))
        self.metrics.passes.labels(trigger="tick" if trigger == "tick" else "event").inc()
        self.metrics.pass_seconds.observe(time.monotonic() - started)
        self.passes += 1
        self.last_pass_ok = time.monotonic()

    def _track(self, kernel: KernelRoutes) -> None:
        """Take ``kernel`` as the kernel's routes. A withdrawn route that was not withdrawn
        before (just re-tagged, or found in a dump) lingers from now on."""
        until = time.monotonic() + self.config.withdrawn_linger_seconds
        self._lingering = {address: self._lingering.get(address, until) for address in kernel.withdrawn}
        self._kernel = kernel

    def _linger_over(self) -> bool:
        now = time.monotonic()
        return any(until <= now for until in self._lingering.values())

    async def _resync_kernel(self) -> bool:
        """Take a full view of the kernel's routes. True if the advertised ones drifted from
        what flock wrote (withdrawn ones only linger and go)."""
        kernel = await self.routes.dump()
        was, now = self._kernel.advertised, kernel.advertised
        drift = {a for a in was.keys() | now.keys() if was.get(a) != now.get(a)}
        drift |= kernel.unlearnable - self._kernel.unlearnable
        drift |= kernel.reshape - self._kernel.reshape
        if self._touched is not None:
            self._touched.update(drift)
        if drift:
            self._dirty = None  # the next pass diffs every route
            logger.warning("kernel routes drifted from what flock wrote, repairing prefixes=%s",
                           ",".join(host_prefix(a) for a in sorted(drift, key=address_sort_key)))
            self.metrics.drift_repairs.inc(len(drift))
        self._track(kernel)
        self._last_resync = time.monotonic()
        return bool(drift)

    async def _apply(self, edits: Sequence[RouteEdit]) -> list[RouteEdit]:
        """Apply ``edits``; return those that failed (after which the view is a fresh dump)."""
        if not edits:
            return []
        kinds = Counter(_OPS[type(edit)] for edit in edits)
        if len(edits) <= EDITS_LOGGED:
            for edit in edits:
                logger.info("route %s", edit)
        else:
            # A first pass or a burst: one line, not thousands (at 10,000 routes a line per
            # route cost the pass ~190 ms, and the log its use). Each edit at debug level.
            logger.info("route edits %s first=%s", " ".join(f"{op}={count}" for op, count in sorted(kinds.items())),
                        "; ".join(str(edit) for edit in edits[:3]))
            if logger.isEnabledFor(logging.DEBUG):
                for edit in edits:
                    logger.debug("route %s", edit)
        for op, count in kinds.items():  # labels() costs ~2 us a call
            self.metrics.route_edits.labels(op=op).inc(count)
        errors = await self.routes.apply(edits)
        if self._touched is not None:
            self._touched.update(edit.address for edit in edits)
        if not errors:
            self._track(apply_edits(self._kernel, edits))
            return []
        self._errors_this_pass += len(errors)
        for error in errors:
            # A person must act on a refused route; say it once, not on every tick.
            level = logging.DEBUG if error.key in self._route_failures else logging.ERROR
            logger.log(level, "route edit failed: %s", error)
        self._route_failures = {error.key for error in errors}
        self.metrics.route_errors.inc(len(errors))
        self._touched = None  # after a full view, any route may differ from what was written
        self._dirty = None  # and the next pass diffs every route, retrying what failed
        # Which edits landed is uncertain now: take a full view rather than guess.
        await self._resync_kernel()
        return [error.edit for error in errors if error.edit is not None]

    async def _withdraw(self, withdrawals: Sequence[WithdrawRoute]) -> None:
        """Re-tag routes as withdrawn (they linger, then :func:`expired` deletes them). A
        route that cannot be re-tagged (its next hop's device is gone) is deleted at once:
        BIRD withdraws its prefix as it learns the deletion."""
        failed = await self._apply(withdrawals)
        if failed:
            logger.warning("could not re-tag %d route(s) as withdrawn; deleting them instead", len(failed))
            await self._apply([DeleteRoute(edit.address, last_resort=edit.address in self._kernel.last_resort)
                               for edit in failed
                               if edit.address in self._kernel.advertised])

    def reconfigure_bird(self) -> None:
        """bird.conf's inputs changed (daisy chaining's BFD neighbours): render and apply it
        again in the next pass, which comes now."""
        self._bird_configured = False
        self.wake("bird")

    async def configure_bird(self) -> None:
        """Make this agent's bird.conf BIRD's config now, at start-up (passes do it otherwise).

        Not while a pass runs: call it before :meth:`run` starts passes that are not holding."""
        await self._configure_bird()

    async def _configure_bird(self) -> None:
        """Make this agent's bird.conf BIRD's config: once, then only if BIRD refused it."""
        if self._bird_configured:
            return
        try:
            # Rendering is inside: a user's template can fail to render (BirdConfigRejected).
            changed = await self.bird.apply(self.render_bird())
        except BirdError as exc:
            self.metrics.bird_reloads.labels(result="failed").inc()
            message = str(exc)
            if self._bird_failure.failed(message):  # one Event per distinct failure, not per tick
                kind = "rejected the new config" if isinstance(exc, BirdConfigRejected) else "unreachable"
                self.events.post(Event(
                    ObjectRef(kind="Node", name=self.config.node_name), "Warning", "BirdReloadFailed",
                    f"BIRD {kind} on {self.config.node_name}; the previous config stays live and "
                    f"flock retries every {self.config.tick_seconds:g}s: {message}"))
            return
        if changed:
            self.metrics.bird_reloads.labels(result="ok").inc()
            logger.info("BIRD reconfigured")
        self._bird_failure.cleared()
        self._bird_configured = True

    # --- events --------------------------------------------------------------------------

    def _post_events(
        self,
        wanted: Mapping[PodRef, frozenset[IPAddress]],
        findings: Sequence[Finding],
        pods: Mapping[tuple[str, str], PodStatus],
    ) -> None:
        node = self.config.node_name

        def left(hops: int) -> str:
            return f"{_hops(hops)} left" if hops else f"no next hop left, {node} no longer advertises it"

        prepend = self.config.last_resort_prepend

        def last_resort_tail(hops: int) -> str:
            return f"{_hops(hops)}, advertised with the AS path prepended {prepend} time{'s' if prepend != 1 else ''}"

        # Only what really happened counts: a pod serves an anycast IP while the kernel's
        # advertised route (the one BIRD learns and advertises) has it as a next hop.
        # A pod's next hops, as {host veth: its addresses on it}: looked up by the hop's
        # device, a string (cheap to hash), then its gateway (a Nexthop's own hash costs
        # ~1 us, and a first pass at 10,000 routes asks 20,000 times).
        links_of: dict[PodRef, dict[str, tuple[IPAddress, ...]]] = {}
        for allocation in self.store.all():
            links = links_of.setdefault(allocation.pod, {})
            links[allocation.host_ifname] = links.get(allocation.host_ifname, ()) + allocation.pod_ips
        actual: dict[PodRef, set[IPAddress]] = {}
        advertised = self._kernel.advertised
        touched = self._touched
        for pod in set(wanted) | set(self._serving):
            if (touched is not None and pod not in self._changed_pods
                    and touched.isdisjoint(wanted.get(pod, ())) and touched.isdisjoint(self._serving.get(pod, ()))):
                # Neither the pod nor a route of its changed in this pass: nothing to tell.
                actual[pod] = set(self._serving.get(pod, ()))
                continue
            mine = links_of.get(pod, {})
            actual[pod] = {address for address in wanted.get(pod, frozenset()) | self._serving.get(pod, frozenset())
                           if _through(advertised.get(address, ()), mine)}
        last_resort_routes = self._kernel.last_resort
        serving_last_resort: dict[PodRef, frozenset[IPAddress]] = {}
        for pod in sorted(set(actual) | set(self._serving), key=str):
            before = self._serving.get(pod, frozenset())
            after = actual.get(pod, set())
            before_last = self._serving_last_resort.get(pod, frozenset())
            after_last = (frozenset(address for address in after if address in last_resort_routes)
                          if last_resort_routes else frozenset())
            if after_last:
                serving_last_resort[pod] = after_last
            if not pod.name:  # a recovered veth whose pod is unknown (flock.core.recovery): no object to tell
                continue
            ref = ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid)
            added = sorted(((after - before) | (before_last & after)) - after_last, key=address_sort_key)
            if added:
                logger.info("anycast advertised pod=%s ips=%s", pod, _listed(added, address_text))
                self.events.post(Event(ref, "Normal", "AnycastAdvertised", self._change_message(
                    added, "advertised from", "pod ready", lambda hops: f"{_hops(hops)} on this node")))
            kept = sorted(after_last - before_last, key=address_sort_key)
            if kept:
                logger.info("anycast kept as a last resort pod=%s ips=%s", pod, _listed(kept, address_text))
                self.events.post(Event(ref, "Normal", "AnycastLastResort", self._change_message(
                    kept, "kept as a last resort on", f"pod terminating and no ready replica left on {node}",
                    last_resort_tail)))
            removed: dict[str, list[IPAddress]] = {}
            for address in sorted(before - after, key=address_sort_key):
                removed.setdefault(withdrawal_reason(pods.get((pod.namespace, pod.name)), address), []).append(address)
            for why, addresses in removed.items():
                logger.info("anycast withdrawn pod=%s ips=%s why=%s", pod, _listed(addresses, address_text), why)
                self.events.post(Event(ref, "Normal", "AnycastWithdrawn", self._change_message(
                    addresses, "withdrawn from", f"pod {why}", left)))
        self._serving = {pod: frozenset(addresses) for pod, addresses in actual.items() if addresses}
        self._serving_last_resort = serving_last_resort

        current = set(findings)
        for finding in sorted(current - self._reported, key=lambda f: (str(f.pod), f.reason)):
            logger.warning("anycast not routed pod=%s reason=%s: %s", finding.pod, finding.reason, finding.message)
            ref = ObjectRef(kind="Pod", name=finding.pod.name, namespace=finding.pod.namespace,
                            uid=finding.pod.uid)
            self.events.post(Event(ref, "Warning", finding.reason, finding.message))
        self._reported = current

    def _change_message(self, addresses: Sequence[IPAddress], verb: str, why: str,
                        tail: Callable[[int], str]) -> str:
        """One Event message for all of a pod's anycast IPs that changed the same way in a pass."""
        node = self.config.node_name
        advertised = self._kernel.advertised
        if len(addresses) == 1:
            address = addresses[0]
            return f"{prefix_text(address)} {verb} {node}: {why}; {tail(len(advertised.get(address, ())))}"
        return (f"{len(addresses)} anycast IPs {verb} {node}: {why}; "
                + _listed(addresses, lambda a: f"{prefix_text(a)} ({tail(len(advertised.get(a, ())))})"))


EDITS_LOGGED = 20
"""Route edits of one batch logged one line each at info level; more make one line (and
each its own at debug level)."""

BURST_SECONDS = 0.025
"""How long after an event's pass further wake-ups are gathered into one pass: a burst
of 250 pods turning Ready within 100 ms then takes ~5 passes, not one per pod."""

_OPS = {ReplaceRoute: "replace", WithdrawRoute: "withdraw", DeleteRoute: "delete"}
"""The ``op`` label of flock_route_edits_total for each kind of edit."""


class RepeatedFailure:
    """Logs a failure that repeats every pass without flooding the log.

    A new (distinct) failure is logged at ERROR at once; while it lasts, at most once per
    ``every`` seconds, with how often it happened since; when it clears, once at INFO.
    """

    def __init__(self, what: str, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.every = every
        self.clock = clock
        self.current: str | None = None
        self._logged_at = 0.0
        self._repeats = 0

    def failed(self, message: str) -> bool:
        """Record one occurrence. True if it is a new failure (not the one already going on)."""
        now = self.clock()
        if message != self.current:
            self.current, self._logged_at, self._repeats = message, now, 0
            logger.error("%s: %s", self.what, message)
            return True
        self._repeats += 1
        if now - self._logged_at >= self.every:
            logger.error("%s (still, %d more times): %s", self.what, self._repeats, message)
            self._logged_at, self._repeats = now, 0
        return False

    def cleared(self) -> None:
        if self.current is not None:
            logger.info("%s: cleared", self.what)
            self.current = None


def _through(hops: Nexthops, links: Mapping[str, tuple[IPAddress, ...]]) -> bool:
    """Whether one of ``hops`` is one of ``links`` (host veth -> the pod's addresses on it)."""
    for hop in hops:
        vias = links.get(hop.dev)
        if vias is not None and hop.via in vias:
            return True
    return False


def _hops(count: int) -> str:
    return f"{count} next hop{'s' if count != 1 else ''}"


def _listed(items: Sequence[T], show: Callable[[T], str] = str, most: int = 8) -> str:
    """The first ``most`` items, comma-separated, and how many more (only those are formatted:
    a pass may list thousands of addresses)."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(show(item) for item in items[:most]) + more


_ZERO_80_BITS: Final = bytes(10)


def address_text(address: IPAddress) -> str:
    """``str(address)``, faster for IPv6: ipaddress writes an IPv6 address in Python (~2.9 us
    on this machine), the C library's inet_ntop in ~0.3 us, and a first pass at 1,000 routes
    writes ~2,000 of them into its Events (~6 ms of a ~60 ms pass). inet_ntop writes what
    ipaddress writes (RFC 5952) except where the first 80 bits are zero (``::ffff:1.2.3.4``,
    ``::1.2.3.4`` for what ipaddress writes ``::ffff:102:304``, ``::102:304``) and it has
    no scope id: those go through str()."""
    if address.version == 6 and not address.scope_id:
        packed = address.packed
        if packed[:10] != _ZERO_80_BITS:
            return socket.inet_ntop(socket.AF_INET6, packed)
    return str(address)


def prefix_text(address: IPAddress) -> str:
    """:func:`~flock.core.model.host_prefix`, through :func:`address_text`."""
    return f"{address_text(address)}/{address.max_prefixlen}"


def withdrawal_reason(status: PodStatus | None, address: IPAddress) -> str:
    """Why a pod stopped serving an anycast IP, for the AnycastWithdrawn message."""
    if status is None:
        return "deleted"
    if status.reason:
        return status.reason
    if status.anycast is not None and address not in status.anycast:
        return f"no longer in its {ANNOTATION} annotation"
    return "deleted"
