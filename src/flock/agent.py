"""The node agent, the composition root: builds the adapters and wires them to the
reconciler and the CNI server. It runs inside the kopf operator (:mod:`flock.operator`),
started by ``flock-agent`` (:mod:`flock.cli`) or ``kopf run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from flock.adapters.bird import BirdControl, render_bird_conf
from flock.adapters.cnisocket import CniSocket
from flock.adapters.conntrack import ConntrackCounter
from flock.adapters.daisychain import DaisyChain
from flock.adapters.kube import EventPoster, KubeApi
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.orphans import recover_orphans
from flock.adapters.pinning import PinningTable
from flock.adapters.plumbing import PodNetwork
from flock.adapters.store import AllocationStore
from flock.cniserver import CniServer
from flock.core.birdview import bird_view, peers_for_node
from flock.core.daisychain import ChainPlan, Member, plan_chain, ring_members, watched
from flock.core.fabric import FROM_NODE_IP
from flock.core.model import Event, IPAddress, IPNetwork, ObjectRef
from flock.core.pinning import chain_mark
from flock.core.podcache import PodCache
from flock.core.settings import AgentConfig, listen_address
from flock.drainwatch import DrainWatch
from flock.errors import BirdError, PinningError
from flock.metrics import Metrics
from flock.reconciler import Reconciler

T = TypeVar("T")

logger = logging.getLogger(__name__)

RING_WAIT_SECONDS = 5.0
"""How long the first bird.conf waits for the Nodes (daisy chaining's BFD neighbours)."""

RELIST_PAUSE = 0.5
"""Seconds between kopf's re-list of pods and the agent's own (one LIST serves the burst)."""


class Agent:
    """One node's agent: state, adapters and the reconcile task."""

    def __init__(self, config: AgentConfig, api: KubeApi) -> None:
        self.config = config
        self.api = api
        self.metrics = Metrics()
        self.store = AllocationStore(config.state_dir)
        self.pods = PodCache(config.node_name, config.eligibility, config.max_anycast_per_pod)
        self.routes = NetlinkRoutes(protocol=config.route_protocol,
                                    withdrawn_protocol=config.withdrawn_route_protocol,
                                    last_resort_protocol=config.last_resort_route_protocol, netns=config.host_netns,
                                    proc=config.proc_path, nexthop_groups=config.datapath.nexthop_groups,
                                    buckets=config.datapath.resilient_buckets)
        self.bird = BirdControl(config_path=config.bird.config_path, socket=config.bird.socket,
                                timeout=config.bird.timeout_seconds)
        self.events = EventPoster(api, self.metrics)
        self.network = PodNetwork(host_netns=config.host_netns, protocol=config.route_protocol,
                                  proc=config.proc_path)
        self.pod_cidrs: tuple[IPNetwork, ...] = ()
        self.node_labels: Mapping[str, str] = {}  # the Node's, read at start when a peer has a nodeSelector
        self.node_addresses: tuple[IPAddress, ...] = ()  # its InternalIPs, for sourceAddress: fromNodeIP
        self.reconciler = Reconciler(
            config=config, store=self.store, pods=self.pods, routes=self.routes, bird=self.bird,
            render_bird=self.render_bird, events=self.events, metrics=self.metrics)
        self.pinning = PinningTable(enabled=config.datapath.connection_pinning, mask=config.datapath.mark_mask,
                                    pools=[pool.cidr for pool in config.anycast_pools],
                                    protocol=config.route_protocol, host_netns=config.host_netns,
                                    proc=config.proc_path,
                                    chain_port=config.datapath.daisy_chain.port if config.datapath.chaining else None)
        self.chain = DaisyChain(port=config.datapath.daisy_chain.port, protocol=config.route_protocol,
                                mark=chain_mark(config.datapath.mark_mask), mask=config.datapath.mark_mask,
                                host_netns=config.host_netns, proc=config.proc_path)
        self.chain_plan: ChainPlan | None = None  # what the kernel holds for the ring (None: not applied yet)
        self.ring_local: IPAddress | None = None  # this node's address in the ring
        self.ring_watched: tuple[IPAddress, ...] = ()  # ring members BIRD runs BFD with (bird.conf)
        self.ring_down: set[IPAddress] = set()  # ring members silent on BFD: left out of the chain
        self._ring_failure: str | None = None  # the last failure to apply the ring, until one works
        self._ring_read = asyncio.Event()  # the Nodes were read once: bird.conf's ring neighbours are known
        self.drain = DrainWatch(config=config, store=self.store, pods=self.pods,
                                next_hop_devs=self.reconciler.next_hop_devs,
                                connections=ConntrackCounter(mask=config.datapath.mark_mask,
                                                             host_netns=config.host_netns),
                                events=self.events, metrics=self.metrics)
        self.cni = CniServer(config=config, store=self.store, network=self.network,
                             lookup_pod=self.lookup_pod, nexthops=self.reconciler, pinning=self.pinning,
                             drain=self.drain)
        self.metrics.pinned_pods.set_function(self.cni.pinned_pods)
        self.metrics.pinning_slots.set(self.pinning.slots)
        self.cni_socket = CniSocket(config.cni_socket, self.cni.handle)
        self.store.add_listener(lambda: self.reconciler.wake("allocation"))
        self._tasks: list[asyncio.Task[None]] = []
        self._listed = asyncio.Event()  # the first full LIST of this node's pods is in the cache
        self._relist = asyncio.Event()  # kopf re-listed: LIST again soon
        self._api_up = False  # the last LIST was answered
        self.api_answered = 0.0  # monotonic time of the last LIST the API server answered
        self._web: web.AppRunner | None = None

    def render_bird(self) -> str:
        view = bird_view(config=self.config, pod_cidrs=self.pod_cidrs, node_labels=self.node_labels,
                         node_addresses=self.node_addresses, ring_local=self.ring_local,
                         ring_neighbours=self.ring_watched)
        return render_bird_conf(view, self.config.bird.template)

    def observe_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Pod watch event: update the cache; wake the reconciler if eligibility changed."""
        if event_type is None:  # kopf lists before it watches: after a 410 Gone or an outage too
            self.relist_soon()
        if self.pods.observe(event_type, body):
            self.reconciler.wake("pod")

    async def start(self) -> None:
        """Local start-up; API-dependent work continues in the background.

        kopf authenticates only after its startup handlers return, so nothing here may
        call the API: the Node's podCIDRs are fetched by the background task.
        """
        for problem in await self.store.load():
            self.events.post(Event(ObjectRef(kind="Node", name=self.config.node_name), "Warning",
                                   "AllocationQuarantined", problem))
        # Veths no record owns (a quarantined record's pod): records rebuilt from the kernel.
        for event in await recover_orphans(self.store, self.config):
            self.events.post(event)
        # Connection pinning as the previous agent left it (or removed, if it is off now).
        await self.cni.adopt_pins()
        await self.routes.start()
        self._log_nexthop_groups()
        # What the previous agent left routed: a DEL then knows which veths share a route.
        await self.reconciler.adopt()
        for warning in await self.routes.set_multipath_hash_policy():
            logger.warning("multipath hashing not set (flows may not spread): %s", warning)
        for warning in await self.network.enable_forwarding():
            logger.warning("forwarding not enabled (pods cannot be reached): %s", warning)
        await self.cni_socket.start()
        await self._serve_http()
        # Passes run from now on, also while the API server is away (liveness); until the
        # first full pod LIST they only keep what the kernel routes (Reconciler.holding).
        self.reconciler.holding = True
        self._tasks = [
            asyncio.create_task(self.reconciler.run(), name="flock passes"),
            asyncio.create_task(self.events.run(), name="flock event poster"),
            asyncio.create_task(self._run(), name="flock start-up"),
            asyncio.create_task(self._keep_pods_listed(), name="flock pod lists"),
        ]
        if self.pinning.slots:
            self._tasks.append(asyncio.create_task(self.drain.run(), name="flock drain watch"))
            self._tasks.append(asyncio.create_task(self._keep_pins(), name="flock pin repair"))
        if self.pinning.chain is not None:
            self._tasks.append(asyncio.create_task(self._keep_ring(), name="flock daisy chain"))
        elif self.config.datapath.daisy_chain.enabled:
            logger.info("daisy chaining off: it needs datapath.connectionPinning")
        if self.pinning.chain is None:
            await self.apply_ring(ChainPlan())  # take down what an earlier agent set up, if anything

    async def _run(self) -> None:
        self.pod_cidrs = await self._pod_cidrs()
        self.cni.pod_cidrs = self.pod_cidrs
        self._log_peers()
        # bird.conf depends on the peers, pools and pod CIDRs (and daisy chaining's BFD
        # neighbours, from the Nodes: waited for a moment, so that a restart renders what
        # BIRD runs and reloads nothing): apply it now, not in the first pass (passes retry
        # if BIRD refuses it).
        if self.pinning.chain is not None and self.config.bird.bfd.enabled:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RING_WAIT_SECONDS):
                    await self._ring_read.wait()
        await self.reconciler.configure_bird()
        # A new agent's pod cache is empty: a pass now would withdraw every anycast IP the
        # previous agent left routed and advertised, and put each back as the watch
        # delivers its pods. So nothing is routed or withdrawn before one full LIST.
        await self._listed.wait()
        logger.info("agent started node=%s pools=%s pod_cidrs=%s", self.config.node_name,
                    ",".join(str(p.cidr) for p in self.config.anycast_pools),
                    ",".join(map(str, self.pod_cidrs)))
        self.reconciler.holding = False
        self.reconciler.wake("start")  # the first real pass now, not a tick later
        # ADDs and DELs a previous agent left unfinished; a DEL may need passes first.
        await self.cni.recover()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.cni_socket.stop()
        await self.cni.close()  # DELs answered whose pods' pins and conntrack entries are still going
        if self._web is not None:
            await self._web.cleanup()
        await self.routes.close()

    async def lookup_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """A pod of this node: from the watch's cache, else from the API (None: no such pod)."""
        cached = self.pods.body(namespace, name)
        if cached is not None:
            return cached
        return await self.api.pod(namespace, name)

    def relist_soon(self) -> None:
        """kopf is (re)listing pods, e.g. after a watch answered 410 Gone or the API came back.

        It sends no DELETED for pods that vanished meanwhile, so a LIST of our own repairs the
        cache (after a short pause, so that kopf's listing is over and one LIST serves it all).
        """
        if self._listed.is_set():
            self._relist.set()

    async def relist_pods(self) -> bool:
        """Replace the pod cache with one full LIST of this node's pods. False if the API did not answer."""
        since = self.pods.watch_serial()
        try:
            bodies = await self.api.node_pods(self.config.node_name)
        except Exception as exc:
            if self._api_up or not self._listed.is_set():  # once per outage, not per tick
                logger.warning("API server: cannot list this node's pods, routes stay as they are and "
                               "the LIST is retried every %gs: %s", self.config.tick_seconds, exc or type(exc).__name__)
            self._set_api_up(False)
            return False
        if self.pods.replace_all(bodies, since):
            self.reconciler.wake("relist")
            if self._listed.is_set():
                logger.warning("pod cache repaired from a full list (watch events were missed)")
        if not self._listed.is_set():
            logger.info("pods listed node=%s pods=%d", self.config.node_name, len(self.pods.snapshot()))
        elif not self._api_up:
            logger.info("API server answers again; pod cache re-listed pods=%d", len(self.pods.snapshot()))
        self._set_api_up(True)
        self.api_answered = time.monotonic()
        self._listed.set()
        return True

    def _set_api_up(self, up: bool) -> None:
        self._api_up = up
        self.metrics.api_up.set(1 if up else 0)

    async def _keep_pods_listed(self) -> None:
        """Keep the pod cache whole whatever happens to the watch. Runs beside the passes:
        API I/O never blocks a pass.

        A full LIST every resyncSeconds and soon after kopf re-lists; between LISTs, a probe
        every tick, and while the API server does not answer, a LIST every tick, so pods
        deleted during an outage leave the cache within a tick of its end.
        """
        listed_at = -math.inf
        while True:
            due = not self._api_up or time.monotonic() - listed_at >= self.config.resync_seconds
            if due or self._relist.is_set():
                self._relist.clear()
                if await self.relist_pods():
                    listed_at = time.monotonic()
            elif not await self.api.answers():
                logger.warning("API server: not answering; routes stay as they are and this node's pods "
                               "are listed again once it answers")
                self._set_api_up(False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_seconds):
                    await self._relist.wait()
                    await asyncio.sleep(RELIST_PAUSE)

    async def _keep_pins(self) -> None:
        """Every resyncSeconds: put back what the kernel lost of the pods' pins (drift repair,
        as the passes do for routes). A table written anew has lost daisy chaining's peers:
        the ring is applied again."""
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            done = await self.cni.repair_pins()
            if done is not None and done.table_written:
                self.chain_plan = None

    async def _keep_ring(self) -> None:
        """Daisy chaining's ring from the Nodes: read at start (every tick until the API
        answers), then every resyncSeconds; while the API server is away the ring stays as
        it was. Every tick: the ring neighbours' BFD states (a member silent on BFD leaves
        the chain until it answers again: flock.core.daisychain.watched), and the chain's
        packet counters into flock_daisy_chain_packets_total."""
        chain = self.config.datapath.daisy_chain
        pools = [pool.cidr for pool in self.config.anycast_pools]
        liveness = self.config.bird.bfd.enabled
        read_at = -math.inf
        members: list[Member] | None = None
        answered: set[IPAddress] = set()  # members whose BFD session has been Up
        down = self.ring_down  # of those, the ones whose session is not Up now
        counted: dict[str, int] = {}
        while True:
            if time.monotonic() - read_at >= self.config.resync_seconds:
                try:
                    nodes = await self.api.nodes()
                except Exception as exc:
                    logger.debug("daisy chain: cannot list Nodes, the ring stays as it is: %s", exc)
                else:
                    read_at = time.monotonic()
                    members = ring_members(nodes)
                    addresses = {m.address for m in members}
                    answered &= addresses
                    down.intersection_update(addresses)
            if members is not None:
                names = {m.address: m.name for m in members}
                if self.ring_watched:
                    await self._watch_ring(names, answered, down)
                self.ring_local = next((m.address for m in members if m.name == self.config.node_name), None)
                ring_watched = watched(members, self.config.node_name, down, chain.max_hops) if liveness else ()
                if ring_watched != self.ring_watched:
                    self.ring_watched = ring_watched
                    self.reconciler.reconfigure_bird()
                self._ring_read.set()
                await self.apply_ring(plan_chain(members, self.config.node_name, chain, pools, down))
            try:
                counts = await self.chain.counters()
            except PinningError as exc:
                logger.debug("%s", exc)
            else:
                for what, value in counts.items():
                    # The table is made again at a restart or a config change: counters restart.
                    delta = value - counted.get(what, 0)
                    self.metrics.daisy_chain_packets.labels(what=what).inc(delta if delta >= 0 else value)
                    counted[what] = value
            await asyncio.sleep(self.config.tick_seconds)

    async def _watch_ring(self, names: Mapping[IPAddress, str], answered: set[IPAddress],
                          down: set[IPAddress]) -> None:
        """Update ``answered`` and ``down`` from BIRD's BFD sessions with the watched members."""
        try:
            states = await self.bird.bfd_sessions()
        except BirdError as exc:
            logger.debug("daisy chain: cannot read BFD sessions, the ring stays as it is: %s", exc)
            return
        for address in self.ring_watched:
            state = states.get(str(address))
            if state == "Up":
                if address not in answered:
                    answered.add(address)
                    logger.info("daisy chain: %s (%s) answers on BFD", names.get(address, "?"), address)
                if address in down:
                    down.discard(address)
                    logger.info("daisy chain: %s (%s) answers on BFD again: back in the ring",
                                names.get(address, "?"), address)
            elif address in answered and address not in down:
                down.add(address)
                logger.warning("daisy chain: %s (%s) is silent on BFD (%s): left out of the ring until it answers",
                               names.get(address, "?"), address, state or "no session")

    async def apply_ring(self, plan: ChainPlan) -> None:
        """Make the kernel hold ``plan`` when it differs from what was applied last."""
        if plan == self.chain_plan:
            return
        try:
            changes = await self.chain.apply(plan)
        except PinningError as exc:
            if str(exc) != self._ring_failure:  # retried every tick: logged when it starts or changes
                self._ring_failure = str(exc)
                logger.error("daisy chain not set up (flows the fabric moves here may be reset); retried every "
                             "tick: %s", exc)
            return
        if self._ring_failure is not None:
            self._ring_failure = None
            logger.info("daisy chain set up again")
        if self.chain_plan is not None or plan.size or changes.total:
            logger.info("daisy chain: %s (%d kernel writes)", plan.describe(), changes.total)
        self.chain_plan = plan
        self.metrics.daisy_chain_nodes.set(plan.size)
        self.metrics.daisy_chain_silent.set(len(self.ring_down))

    async def _pod_cidrs(self) -> tuple[IPNetwork, ...]:
        """podCIDRs from the config, else from the Node (retried until the API answers).

        The Node is read (once) also when a peer has a nodeSelector (its labels) or
        ``sourceAddress: fromNodeIP`` (its InternalIPs).
        """
        peers = self.config.bird.peers
        needs_node = (self.config.pod_cidrs is None
                      or any(p.node_selector is not None or p.source_address == FROM_NODE_IP for p in peers))
        if not needs_node:
            return self.config.pod_cidrs or ()

        async def read_node() -> tuple[IPNetwork, ...]:
            node = await self.api.node(self.config.node_name)
            self.node_labels = dict((node.get("metadata") or {}).get("labels") or {})
            self.node_addresses = tuple(
                ipaddress.ip_address(a["address"]) for a in (node.get("status") or {}).get("addresses") or []
                if a.get("type") == "InternalIP")
            if self.config.pod_cidrs is not None:
                return self.config.pod_cidrs
            return tuple(ipaddress.ip_network(c) for c in (node.get("spec") or {}).get("podCIDRs") or [])

        return await _until_it_works(read_node, f"cannot read Node {self.config.node_name} for its podCIDRs, "
                                                f"labels and addresses")

    def _log_nexthop_groups(self) -> None:
        """Once at start: how the anycast routes are written, and why if not as configured."""
        for mode in ("resilient", "multipath"):
            self.metrics.nexthop_groups.labels(mode=mode).set(1 if mode == self.routes.mode else 0)
        if self.routes.fallback is not None:
            logger.warning("resilient next-hop groups unavailable, anycast routes are plain multipath "
                           "(a pod joining or leaving may move other pods' untracked flows): %s", self.routes.fallback)
        elif self.routes.mode == "resilient":
            logger.info("anycast routes use resilient next-hop groups buckets=%d",
                        self.config.datapath.resilient_buckets)
        else:
            logger.info("anycast routes are plain multipath (datapath.nexthopGroups: multipath)")

    def _log_peers(self) -> None:
        """One line per configured peer: whether this node has it, and how (no password, ever)."""
        chosen = set(peers_for_node(self.config.bird.peers, self.node_labels))
        for peer in self.config.bird.peers:
            if peer not in chosen:
                logger.info("BGP peer not for this node peer=%s asn=%d nodeSelector=%s", peer.address, peer.asn,
                            peer.node_selector)
                continue
            bfd = (f"{peer.bfd.interval_ms}ms x{peer.bfd.multiplier}" if peer.bfd.enabled else "off")
            logger.info("BGP peer peer=%s asn=%d bfd=%s password=%s multihop=%s port=%d", peer.address, peer.asn,
                        bfd, "yes" if peer.password_file is not None else "no", peer.multihop or "no", peer.port)

    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = listen_address(self.config.listen)
        await web.TCPSite(runner, host, port).start()
        self._web = runner

    async def _healthz(self, request: web.Request) -> web.Response:
        # Alive while reconcile passes keep completing (a stuck pass shows here), whatever
        # the API server does: restarting the agent during an outage would help nobody.
        age = time.monotonic() - self.reconciler.last_pass_ok
        limit = max(3 * self.config.tick_seconds, 10.0)
        if self.reconciler.passes and age <= limit:
            return web.Response(text=f"ok: last pass {age:.1f}s ago\n")
        return web.Response(status=503, text=f"unhealthy: no reconcile pass for {age:.1f}s\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        # Ready once the node's pods are listed and while the API server answers the LISTs.
        if not self._listed.is_set():
            return web.Response(status=503, text="not ready: this node's pods are not listed yet\n")
        if not self._api_up:
            age = time.monotonic() - self.api_answered
            return web.Response(status=503, text=f"not ready: the API server has not answered for {age:.0f}s; "
                                "routes stay as they are\n")
        return web.Response(text="ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")


async def _until_it_works(call: Callable[[], Awaitable[T]], failing: str) -> T:
    """``call()``, retried with backoff (1 s doubling to 30 s) until it returns."""
    delay = 1.0
    while True:
        try:
            return await call()
        except Exception as exc:
            logger.warning("%s; retrying in %.0fs: %s", failing, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
