"""The agent side of CNI: a unix socket that answers flock-cni, and the work behind it.

ADD: validate, learn the pod's anycast IPs (annotation, pool policy), pick addresses,
write a *pending* allocation record (durable, before any plumbing), plumb the veth,
addresses and routes, then *commit* the record with its anycast list (which wakes the
reconciler). DEL: if the pod's veth is one of several next hops of an anycast route,
mark the record *releasing* and wait for a reconcile pass to take it out; then remove
the veth and the record (idempotent). CHECK: compare the pod's network with the record.

Requests are handled one at a time (one lock), so two ADDs never pick the same address
and the store never changes under a reconcile pass. What an ADD does under the lock is
bounded, so no pod keeps the others waiting for long: its API read is done before it
takes the lock, its anycast IPs are at most ``maxAnycastPerPod``, and its plumbing is
cut off after ``add_seconds``. A pending or releasing record
found at start-up is an ADD or DEL that was cut short (agent killed): it is finished
once the agent's passes run (the veth removed, the record released); the runtime
retries an ADD.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiofiles.os

from flock.adapters.plumbing import GATEWAYS, PlumbingError, PodNetwork
from flock.adapters.store import AllocationStore
from flock.cni.plugin import MAX_FRAME
from flock.core.annotation import ANNOTATION, parse_anycast
from flock.core.cnispec import (
    CONTAINER_UNKNOWN,
    INVALID_ENV,
    IO_FAILURE,
    NETWORK_STATE_DIFFERS,
    NO_ADDRESS_LEFT,
    TRY_AGAIN_LATER,
    CniError,
    CniRequest,
    Interface,
    add_result,
    error_result,
    parse_request,
)
from flock.core.ipam import AddressesExhausted, choose_address
from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, IPNetwork, PodRef
from flock.core.pools import pool_rejection
from flock.core.recovery import PLACEHOLDER_PREFIX
from flock.core.settings import AgentConfig

logger = logging.getLogger(__name__)

PodLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""(namespace, name) -> the Pod as the API returns it, None if it does not exist."""
Unroute = Callable[[str], Awaitable[bool]]
"""Waits until no anycast route of several next hops uses the named host veth (False: cannot yet)."""


def host_ifname(container_id: str, attempt: int = 0) -> str:
    """The host-side veth of a container: ``flock`` + 8 hex chars of its id's SHA-256.

    32 bits collide now and then over a node's life: ``attempt`` > 0 derives the next
    candidate, for when another live container already owns the first.
    """
    seed = container_id if attempt == 0 else f"{container_id}#{attempt}"
    return "flock" + hashlib.sha256(seed.encode()).hexdigest()[:8]


@dataclasses.dataclass
class CniServer:
    config: AgentConfig
    store: AllocationStore
    network: PodNetwork
    lookup_pod: PodLookup
    pod_cidrs: tuple[IPNetwork, ...] | None = None  # None until known: ADD answers "try again later"
    shares_route: Callable[[str], bool] = lambda dev: False
    """Whether the named host veth is one of several next hops of an anycast route."""
    unroute: Unroute | None = None
    add_seconds: float = 30.0
    """Longest an ADD's plumbing may hold the lock (every other request waits for it)."""

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._last_given: dict[int, IPAddress] = {}

    # --- socket --------------------------------------------------------------------------

    async def start(self) -> None:
        path = self.config.cni_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600: only root may drive the agent
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.config.cni_socket.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size > MAX_FRAME:
                    raise ValueError(f"request of {size} bytes is too large")
                request = json.loads(await reader.readexactly(size))
            if not isinstance(request, dict):
                raise ValueError("request is not a JSON object")
            env, stdin = request.get("env"), request.get("stdin")
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()) \
                    or not isinstance(stdin, str):
                raise ValueError("request is not {env: {name: string}, stdin: string}")
            code, stdout = await self.handle(env, stdin)
            writer.write(_frame({"exitCode": code, "stdout": stdout}))
            await writer.drain()
        except (OSError, ValueError, RecursionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            logger.warning("bad request on the CNI socket: %s", exc or type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # --- requests ------------------------------------------------------------------------

    async def handle(self, env: Mapping[str, str], stdin: str) -> tuple[int, str]:
        """One CNI request -> (exit code, stdout JSON)."""
        version = "1.0.0"
        try:
            request = parse_request(env, stdin)
            version = request.cni_version
            if request.command == "ADD":
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
                return 0, json.dumps({"cniVersion": version, "supportedVersions": ["1.0.0"]})
        except CniError as exc:
            logger.warning("CNI %s %s failed: %s %s", env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID"),
                           exc.msg, exc.details)
            return 1, json.dumps(error_result(version, exc))
        except Exception as exc:  # never let one request take the agent down
            logger.exception("CNI %s %s failed unexpectedly", env.get("CNI_COMMAND"), env.get("CNI_CONTAINERID"))
            return 1, json.dumps(error_result(version, CniError(IO_FAILURE, f"flock-agent: {exc}")))

    async def _add(self, request: CniRequest, anycast: tuple[IPAddress, ...]) -> dict[str, Any]:
        """The ADD's work under the lock. A failure leaves no record, veth or address behind."""
        if self.pod_cidrs is None:
            raise CniError(TRY_AGAIN_LATER, "flock-agent is starting: the node's pod CIDRs are not known yet")
        if not await aiofiles.os.path.exists(request.netns):
            raise CniError(INVALID_ENV, f"CNI_NETNS {request.netns} does not exist")
        container = ContainerID(request.container_id)
        existing = self.store.get(container)
        if existing is not None and existing.state is AllocationState.COMMITTED:
            # A repeated ADD: answer with what the container already has, if it asks for that.
            await self._same_interface(request, existing)
            return self._result(request, existing, host_mac="", pod_mac="")
        if existing is not None:
            await self._release(existing)

        pod = PodRef(request.pod_namespace, request.pod_name, request.pod_uid)
        pod_ips = self._choose_addresses()
        allocation = Allocation(container, pod, self._free_ifname(container), pod_ips, (), AllocationState.PENDING)
        await self.store.put(allocation)  # durable before any plumbing: a crash leaves a record
        try:
            async with asyncio.timeout(self.add_seconds):
                plumbed = await self.network.add(host_ifname=allocation.host_ifname, ifname=request.ifname,
                                                 pod_netns=request.netns, pod_ips=pod_ips, anycast=anycast)
        except (PlumbingError, TimeoutError) as exc:
            await self._release(allocation)
            raise CniError(IO_FAILURE, str(exc) or f"setting up the pod's network took over {self.add_seconds:.0f}s"
                           ) from exc
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
            gateways={version: ipaddress.ip_address(gw) for version, gw in GATEWAYS.items()},
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

    def _free_ifname(self, container: ContainerID) -> str:
        """The container's veth name, skipping names another container's record owns."""
        owned = {a.host_ifname for a in self.store.all() if a.container_id != container}
        return next(name for attempt in range(1000) if (name := host_ifname(container, attempt)) not in owned)

    def _choose_addresses(self) -> tuple[IPAddress, ...]:
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
        await self._release(allocation)
        logger.info("pod unplumbed pod=%s container=%s dev=%s", allocation.pod, request.container_id[:12],
                    allocation.host_ifname)

    async def _check(self, request: CniRequest) -> None:
        allocation = self.store.get(ContainerID(request.container_id))
        if allocation is None or allocation.state is not AllocationState.COMMITTED:
            raise CniError(CONTAINER_UNKNOWN, f"flock has no network for container {request.container_id}")
        if not await aiofiles.os.path.exists(request.netns):
            raise CniError(INVALID_ENV, f"CNI_NETNS {request.netns} does not exist")
        try:
            problems = await self.network.check(host_ifname=allocation.host_ifname, ifname=request.ifname,
                                                pod_netns=request.netns, pod_ips=allocation.pod_ips,
                                                anycast=allocation.anycast)
        except PlumbingError as exc:
            raise CniError(IO_FAILURE, str(exc)) from exc
        if problems:
            raise CniError(NETWORK_STATE_DIFFERS, "; ".join(problems))

    async def _release(self, allocation: Allocation) -> None:
        if self.unroute is not None and self.shares_route(allocation.host_ifname):
            # Deleting a veth that is one next hop of an IPv4 multipath route makes the
            # kernel drop the whole route, and every other replica's traffic with it. Take
            # the pod out of the route first (a DEL without a graceful termination before it).
            if allocation.state is not AllocationState.RELEASING:
                await self.store.put(dataclasses.replace(allocation, state=AllocationState.RELEASING))
            if not await self.unroute(allocation.host_ifname):
                raise CniError(TRY_AGAIN_LATER, f"flock-agent is starting or stopping: pod {allocation.pod} "
                               "must leave its anycast route before its network goes; try again")
        await self._remove_veth(allocation.host_ifname)
        await self.store.remove(allocation.container_id)

    async def _remove_veth(self, ifname: str) -> None:
        try:
            await self.network.delete(ifname)
        except PlumbingError as exc:
            raise CniError(TRY_AGAIN_LATER, str(exc)) from exc

    async def recover(self) -> None:
        """Release every unfinished allocation: ADDs and DELs cut short by an agent crash."""
        async with self._lock:
            await self._recover()

    async def _recover(self) -> None:
        for allocation in self.store.all():
            if allocation.state is not AllocationState.COMMITTED:
                logger.warning("releasing an unfinished %s container=%s pod=%s ips=%s",
                               "ADD" if allocation.state is AllocationState.PENDING else "DEL",
                               allocation.container_id[:12], allocation.pod, ",".join(map(str, allocation.pod_ips)))
                try:
                    await self._release(allocation)
                except Exception as exc:  # one record must not keep the others, or the agent, from going on
                    logger.error("could not release container=%s: %s", allocation.container_id[:12], exc)


def _frame(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return len(data).to_bytes(4, "big") + data

