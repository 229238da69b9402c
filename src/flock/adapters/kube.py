"""The agent's few Kubernetes API calls besides kopf's watch: Events, a node's pods, the Node.

It goes through kopf's own API client (``kopf._cogs.clients.api``) so that credentials,
retries and TLS are exactly what the watch uses. That module is private to kopf, hence
the pinned kopf minor version in pyproject.toml; everything touching it is here.

Events are posted from a background queue so a slow API server never delays routing.
They are named ``<object>.<unix-nanoseconds hex>`` as client-go's recorder does, rather
than relying on ``generateName``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

from flock.core.eventlimit import EventLimiter, Verdict
from flock.core.model import Event, ObjectRef
from flock.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMPONENT = "flock-agent"


class KubeApi:
    """Thin async wrapper over kopf's API client.

    kopf's client finds its credentials through context variables that kopf sets for its
    own tasks. Calls from elsewhere (e.g. a CNI request on the agent's unix socket) would
    wait forever for credentials, so every call runs in the context captured when this
    object was made: make it inside a kopf handler (the agent's startup handler does).
    """

    def __init__(self, settings: kopf.OperatorSettings, timeout: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._context = contextvars.copy_context()

    async def _in_kopf_context(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.get_running_loop().create_task(coro, context=self._context.copy())
        async with asyncio.timeout(self._timeout):
            return await task

    async def _get(self, url: str) -> Any:
        # Tried once: callers retry on their own schedule (every tick while the API server
        # is away), and a call must fail fast for /readyz to tell the truth.
        return await self._in_kopf_context(_get_json(url, self._settings))

    async def answers(self) -> bool:
        """Whether the API server answers at all: one ``GET /version``, not retried.

        Any HTTP answer counts; kube-apiserver serves /version from memory, so this is the
        cheapest way to notice an outage, and its end, within a tick.
        """
        try:
            await self._get("/version")
        except kopf_errors.APIError:
            return True
        except Exception:  # connection refused or reset, TLS, timeout: not answering
            return False
        return True

    async def node_pods(self, node_name: str) -> list[Mapping[str, Any]]:
        """Every pod bound to this node (one LIST with a field selector)."""
        data = await self._get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node_name}")
        return list(data.get("items") or [])

    async def node(self, node_name: str) -> Mapping[str, Any]:
        data: Mapping[str, Any] = await self._get(f"/api/v1/nodes/{node_name}")
        return data

    async def nodes(self) -> list[Mapping[str, Any]]:
        """Every Node (daisy chaining's ring); ``resourceVersion=0``: from the API server's cache."""
        data = await self._get("/api/v1/nodes?resourceVersion=0")
        return list(data.get("items") or [])

    async def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """One pod; None if the API says it does not exist."""
        try:
            data: Mapping[str, Any] = await self._get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        except kopf_errors.APINotFoundError:
            return None
        return data

    async def create_event(self, event: Event) -> str:
        """POST the Event; returns its name (to raise its count later)."""
        namespace = event.involved.namespace or "default"  # Node events live in "default"
        name = f"{event.involved.name}.{time.time_ns():x}"
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace, "name": name},
            "involvedObject": event.involved.as_dict(),
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._in_kopf_context(kopf_api.post(f"/api/v1/namespaces/{namespace}/events", payload=body,
                                                  settings=self._settings, logger=logger))
        return name

    async def count_event(self, namespace: str, name: str, count: int) -> None:
        """Raise the count of an Event posted before (the same thing happened again)."""
        await self._in_kopf_context(kopf_api.patch(
            f"/api/v1/namespaces/{namespace or 'default'}/events/{name}",
            payload={"count": count, "lastTimestamp": _now()},
            headers={"Content-Type": "application/merge-patch+json"},
            settings=self._settings, logger=logger))


async def _get_json(url: str, settings: kopf.OperatorSettings) -> Any:
    response = await kopf_api.request("get", url, settings=settings, logger=logger, backoffs=())
    async with response:
        return await response.json()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class EventPoster:
    """An EventSink that posts through the API from a background task, in order.

    Bounded whatever happens on the node: a queue of at most ``limit`` Events, and the
    per-object rate and repeat rules of :class:`~flock.core.eventlimit.EventLimiter` (each
    dropped run logged once, counted in ``flock_events_dropped_total``).
    """

    def __init__(self, api: KubeApi, metrics: Metrics, limit: int = 1000,
                 limiter: EventLimiter | None = None) -> None:
        self._api = api
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[Event, int]] = asyncio.Queue(maxsize=limit)
        self._limiter = limiter or EventLimiter()
        self._names: collections.OrderedDict[tuple[ObjectRef, str, str, str], str] = collections.OrderedDict()

    def post(self, event: Event) -> None:
        key = (event.type, event.reason, event.message)
        verdict, count = self._limiter.judge(event.involved, key)
        if verdict is Verdict.DROP:
            self._metrics.events_dropped.labels(why="rate").inc()
            if count == 1:
                logger.warning("too many events about %s %s: dropping them until its rate allows more "
                               "(burst %d, then one every %.0fs) reason=%s", event.involved.kind,
                               _object_name(event.involved), self._limiter.burst, self._limiter.refill_seconds,
                               event.reason)
            return
        try:
            self._queue.put_nowait((event, count))
        except asyncio.QueueFull:
            self._limiter.forget(event.involved, key)
            self._metrics.events_dropped.labels(why="queue").inc()
            logger.warning("event queue full, dropping event reason=%s object=%s",
                           event.reason, _object_name(event.involved))

    async def run(self) -> None:
        while True:
            event, count = await self._queue.get()
            key = (event.involved, event.type, event.reason, event.message)
            try:
                name = self._names.get(key) if count > 1 else None
                if name is not None:
                    await self._api.count_event(event.involved.namespace, name, count)
                else:
                    self._names[key] = await self._api.create_event(event)
                    while len(self._names) > 4096:
                        self._names.popitem(last=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Events are auxiliary: log and go on.
                self._limiter.forget(event.involved, key[1:])
                logger.warning("could not post event reason=%s object=%s: %s",
                               event.reason, _object_name(event.involved), exc)


def _object_name(ref: ObjectRef) -> str:
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
