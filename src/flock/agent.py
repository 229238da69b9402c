"""The node agent: builds the adapters, wires them to the reconciler, runs under kopf.

``flock-agent --config FILE`` validates the config (one error line and exit 2 if bad)
and runs the kopf operator defined in :mod:`flock.operator` on a uvloop loop; the same
handlers run as ``kopf run --standalone handlers/agent.py`` with ``FLOCK_CONFIG=FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import kopf
from aiohttp import web

from flock.bird import BirdControl, render_bird_conf
from flock.birdview import bird_view
from flock.cni.server import CniServer
from flock.config import AgentConfig, load_config
from flock.errors import ConfigError, FlockError
from flock.kube import Event, EventPoster, KubeApi, ObjectRef
from flock.metrics import Metrics
from flock.model import IPAddress, IPNetwork
from flock.netlink import NetlinkRoutes
from flock.netns import named as named_netns
from flock.plumbing import PodNetwork
from flock.podcache import PodCache
from flock.reconciler import Reconciler
from flock.store import AllocationStore

T = TypeVar("T")

logger = logging.getLogger(__name__)

CONFIG_ENV = "FLOCK_CONFIG"


class Agent:
    """One node's agent: state, adapters and the reconcile task."""

    def __init__(self, config: AgentConfig, api: KubeApi) -> None:
        self.config = config
        self.api = api
        self.metrics = Metrics()
        self.store = AllocationStore(config.state_dir)
        self.pods = PodCache(config.node_name, config.eligibility, config.max_anycast_per_pod)
        self.routes = NetlinkRoutes(protocol=config.route_protocol, netns=config.host_netns,
                                    proc=config.proc_path)
        self.bird = BirdControl(config_path=config.bird.config_path, socket=config.bird.socket,
                                timeout=config.bird.timeout_seconds)
        self.events = EventPoster(api)
        self.network = PodNetwork(host_netns=config.host_netns, protocol=config.route_protocol,
                                  proc=config.proc_path)
        self.pod_cidrs: tuple[IPNetwork, ...] = ()
        self.reconciler = Reconciler(
            config=config, store=self.store, pods=self.pods, routes=self.routes, bird=self.bird,
            render_bird=self.render_bird, events=self.events, metrics=self.metrics)
        self.cni = CniServer(config=config, store=self.store, network=self.network,
                             lookup_pod=self.lookup_pod,
                             shares_route=self.reconciler.shares_route, unroute=self.unroute)
        self.store.add_listener(lambda: self.reconciler.wake("allocation"))
        self._tasks: list[asyncio.Task[None]] = []
        self._passing: asyncio.Task[None] | None = None  # Reconciler.run, once the pods are listed
        self._web: web.AppRunner | None = None

    def render_bird(self, anycast: frozenset[IPAddress]) -> str:
        view = bird_view(config=self.config, anycast=anycast, pod_cidrs=self.pod_cidrs)
        return render_bird_conf(view, self.config.bird.template)

    def observe_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Pod watch event: update the cache; wake the reconciler if eligibility changed."""
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
        await self.routes.start()
        # What the previous agent left routed: a DEL then knows which veths share a route.
        await self.reconciler.adopt()
        for warning in await self.routes.set_multipath_hash_policy():
            logger.warning("multipath hashing not set (flows may not spread): %s", warning)
        for warning in await self.network.enable_forwarding():
            logger.warning("forwarding not enabled (pods cannot be reached): %s", warning)
        await self.cni.start()
        await self._serve_http()
        self._tasks = [
            asyncio.create_task(self.events.run(), name="flock event poster"),
            asyncio.create_task(self._run(), name="flock reconciler"),
        ]

    async def _run(self) -> None:
        self.pod_cidrs = await self._pod_cidrs()
        self.cni.pod_cidrs = self.pod_cidrs
        # A new agent's pod cache is empty: a pass now would withdraw every anycast IP the
        # previous agent left routed and advertised, and put each back as the watch
        # delivers its pods. So nothing is routed or withdrawn before one full LIST.
        await self._first_pod_list()
        logger.info("agent started node=%s pools=%s pod_cidrs=%s", self.config.node_name,
                    ",".join(str(p.cidr) for p in self.config.anycast_pools),
                    ",".join(map(str, self.pod_cidrs)))
        self.reconciler.wake("start")  # the first pass now, not a tick later
        self._passing = asyncio.create_task(self.reconciler.run(on_resync=self.relist_pods), name="flock passes")
        try:
            # ADDs and DELs a previous agent left unfinished; a DEL may need passes first.
            await self.cni.recover()
            await self._passing
        finally:
            self._passing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._passing

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.cni.stop()
        if self._web is not None:
            await self._web.cleanup()
        await self.routes.close()

    async def lookup_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """A pod of this node: from the watch's cache, else from the API (None: no such pod)."""
        cached = self.pods.body(namespace, name)
        if cached is not None:
            return cached
        return await self.api.pod(namespace, name)

    async def unroute(self, dev: str) -> bool:
        """Wait until no route shares ``dev`` with a pod that stays. False: no passes run (yet)."""
        limit = self.config.bird.timeout_seconds + 5  # a pass may wait for one BIRD reload
        try:
            async with asyncio.timeout(limit):
                while self.reconciler.shares_route(dev):
                    if self._passing is None or self._passing.done():
                        return False
                    await self.reconciler.next_pass("cni-del")
        except TimeoutError:
            logger.warning("%s is still one of several next hops after %.0fs; deleting it anyway", dev, limit)
        return True

    async def relist_pods(self) -> None:
        """Repair the pod cache from a full LIST: kopf sends no DELETED for pods gone in a watch gap."""
        since = self.pods.watch_serial()
        try:
            bodies = await self.api.node_pods(self.config.node_name)
        except Exception as exc:
            logger.warning("could not re-list this node's pods, keeping the watch's view: %s", exc)
            return
        if self.pods.replace_all(bodies, since):
            logger.warning("pod cache repaired from a full list (watch events were missed)")

    async def _first_pod_list(self) -> None:
        """Fill the pod cache from one full LIST (retried until the API answers)."""
        async def list_once() -> None:
            since = self.pods.watch_serial()
            self.pods.replace_all(await self.api.node_pods(self.config.node_name), since)

        await _until_it_works(list_once, "cannot list this node's pods, routes stay as they are")
        logger.info("pods listed node=%s pods=%d", self.config.node_name, len(self.pods.snapshot()))

    async def _pod_cidrs(self) -> tuple[IPNetwork, ...]:
        """podCIDRs from the config, else from the Node (retried until the API answers)."""
        if self.config.pod_cidrs is not None:
            return self.config.pod_cidrs

        async def read_node() -> tuple[IPNetwork, ...]:
            node = await self.api.node(self.config.node_name)
            return tuple(ipaddress.ip_network(c) for c in (node.get("spec") or {}).get("podCIDRs") or [])

        return await _until_it_works(read_node, f"cannot read Node {self.config.node_name} for its podCIDRs")

    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = self.config.listen.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        self._web = runner

    async def _healthz(self, request: web.Request) -> web.Response:
        # Alive while reconcile passes keep completing (a stuck pass shows here).
        age = time.monotonic() - self.reconciler.last_pass_ok
        limit = max(3 * self.config.tick_seconds, 10.0)
        if self.reconciler.passes and age <= limit:
            return web.Response(text=f"ok: last pass {age:.1f}s ago\n")
        return web.Response(status=503, text=f"unhealthy: no reconcile pass for {age:.1f}s\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain")


def check_host(config: AgentConfig) -> None:
    """What the config points at on this host must exist. Raises ConfigError."""
    if not os.path.isdir(os.path.join(config.proc_path, "sys", "net", "ipv4")):
        raise ConfigError(f"procPath: {config.proc_path}/sys/net/ipv4 does not exist "
                          f"(in a container, is the host's /proc mounted at {config.proc_path}?)")
    if config.host_netns is not None and not os.path.exists(named_netns(config.host_netns)):
        raise ConfigError(f"hostNetns: no network namespace named {config.host_netns!r} "
                          f"({named_netns(config.host_netns)})")


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


def config_from_environment() -> AgentConfig:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"set {CONFIG_ENV} to the agent's config file")
    config = load_config(path)
    check_host(config)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flock-agent", description="flock's node agent")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument("--check-config", action="store_true",
                        help="only check the config file (not this host), print one line, and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            print(f"flock-agent: {args.config}: config ok (node {config.node_name})")
            return 0
        check_host(config)  # fail fast, with one line, before kopf starts
    except FlockError as exc:
        print(f"flock-agent: {exc}", file=sys.stderr)
        return 2
    os.environ[CONFIG_ENV] = os.path.abspath(args.config)

    import uvloop

    import flock.operator  # registers the kopf handlers

    kopf.configure(debug=args.verbose, verbose=args.verbose)
    uvloop.run(kopf.operator(
        registry=flock.operator.registry, standalone=True, clusterwide=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
