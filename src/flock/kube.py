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
import contextvars
import dataclasses
import datetime
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

COMPONENT = "flock-agent"


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """The involved object of an Event."""

    kind: str  # "Pod" or "Node"
    name: str
    namespace: str = ""
    uid: str = ""

    def as_dict(self) -> dict[str, str]:
        ref = {"apiVersion": "v1", "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclasses.dataclass(frozen=True)
class Event:
    involved: ObjectRef
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


class EventSink(Protocol):
    def post(self, event: Event) -> None:
        """Queue an Event for posting; never blocks, never raises."""


class RecordingEvents:
    """An EventSink that keeps Events in a list (unit tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def post(self, event: Event) -> None:
        self.events.append(event)


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
        return await self._in_kopf_context(kopf_api.get(url, settings=self._settings, logger=logger))

    async def node_pods(self, node_name: str) -> list[Mapping[str, Any]]:
        """Every pod bound to this node (one LIST with a field selector)."""
        data = await self._get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node_name}")
        return list(data.get("items") or [])

    async def node(self, node_name: str) -> Mapping[str, Any]:
        data: Mapping[str, Any] = await self._get(f"/api/v1/nodes/{node_name}")
        return data

    async def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """One pod; None if the API says it does not exist."""
        try:
            data: Mapping[str, Any] = await self._get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        except kopf_errors.APINotFoundError:
            return None
        return data

    async def create_event(self, event: Event) -> None:
        namespace = event.involved.namespace or "default"  # Node events live in "default"
        now = datetime.datetime.now(datetime.UTC).isoformat()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace, "name": f"{event.involved.name}.{time.time_ns():x}"},
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


class EventPoster:
    """An EventSink that posts through the API from a background task, in order."""

    def __init__(self, api: KubeApi, limit: int = 10000) -> None:
        self._api = api
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=limit)

    def post(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning("event queue full, dropping event reason=%s object=%s",
                           event.reason, event.involved.name)

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._api.create_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Events are auxiliary: log and go on.
                logger.warning("could not post event reason=%s object=%s: %s",
                               event.reason, event.involved.name, exc)
