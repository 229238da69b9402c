"""The lab's Kubernetes API: kmock's emulator on 127.0.0.1, as a process of its own.

``python -m flock.lab.apiserver --port 6443 --node node-a=203.0.113.0/26,2001:db8:200::/64``
serves Namespaces, Nodes, Pods and Events to the agents (real kopf operators) and to the
lab's kubelet emulator. kmock's gaps that matter here: DELETE without finalizers removes
an object at once (the kubelet emulator models graceful deletion by patching
``deletionTimestamp`` itself); objects get no uid unless given one; a POST to
/api/v1/namespaces is not parsed, so namespaces and nodes are stored directly.

:class:`Emulator` (the tests' API server too) fixes two gaps of kmock 0.8 that would make
the lab measure the emulator rather than flock: kmock decides which reaction serves a
request by iterating every request it ever served, so each request cost more than the one
before (a PATCH: 3 ms at first, 300+ ms after 1,200 requests); and it ignored
``fieldSelector``, so every agent got every pod. ``bench/apiserver.py`` measures both.

With ``--lab DIR`` every watch event written to a client is logged, with the time
(CLOCK_MONOTONIC), to ``DIR/api-watch.jsonl``: the lab's report splits a withdrawal into
the API's share (PATCH sent -> event on the agent's watch) and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import pathlib
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import IO, Any, cast

import attrs
import kmock

WATCH_LOG = "api-watch.jsonl"

Selector = Callable[[Mapping[str, Any]], bool]
WatchListener = Callable[[kmock.Request, Mapping[str, Any]], None]


def field_selector(text: str) -> Selector:
    """``spec.nodeName=node-a,metadata.namespace!=kube-system`` as a predicate on an object.

    Terms are ANDed; ``=`` and ``==`` mean equal, ``!=`` not equal; a missing field is "".
    """
    terms: list[tuple[list[str], bool, str]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                field, value = term.split(op, 1)
                terms.append((field.strip().split("."), op != "!=", value.strip()))
                break
        else:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"invalid field selector {term!r}")

    def selects(obj: Mapping[str, Any]) -> bool:
        for path, equal, value in terms:
            found: Any = obj
            for key in path:
                found = found.get(key) if isinstance(found, Mapping) else None
            actual = "" if found is None else str(found).lower() if isinstance(found, bool) else str(found)
            if (actual == value) != equal:
                return False
        return True

    return selects


def _selector(request: kmock.Request) -> Selector | None:
    text = request.params.get("fieldSelector")
    return field_selector(text) if text else None


def _forget(requests: list[kmock.Request], request: kmock.Request) -> None:
    for index in range(len(requests) - 1, -1, -1):  # the newest first: usually the one
        if requests[index] is request:
            del requests[index]
            return


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator at a flat cost per request, with field selectors.

    * kmock holds only the requests being served (a watch: until it ends). Its matching
      iterates what it holds, so a request costs the same at the 10,000th as at the first.
      DSL views (``list(api)``, ``api["get"][:1]``...) see in-flight requests only; the
      last ``keep`` finished requests are in :attr:`served` for tests to inspect.
    * ``fieldSelector`` is honoured on LIST and WATCH: a watch gets ADDED when an object
      comes to match and DELETED when it stops matching, as from a real API server.
    * ``on_watch_event(request, event)`` is called for every event as it is handed to a
      watch's stream.
    """

    keep: int = 0
    on_watch_event: WatchListener | None = None
    _served: collections.deque[kmock.Request] = attrs.field(init=False)

    @_served.default
    def _no_history(self) -> collections.deque[kmock.Request]:
        return collections.deque(maxlen=self.keep)

    @property
    def served(self) -> list[kmock.Request]:
        """The last ``keep`` finished requests, oldest first."""
        return list(self._served)

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await super()._handle(request)
        finally:
            _forget(self._requests, request)
            for payload in self._payloads:
                _forget(payload._requests, request)
            self._served.append(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing: Any = await super()._serve_list(request)
        selects = _selector(request)
        if selects is not None:
            listing["items"] = [obj for obj in listing["items"] if selects(obj)]
        return listing

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        selects = _selector(request)
        shown: set[tuple[str | None, str | None]] = set()  # what this watch's client holds
        async with contextlib.aclosing(cast(AsyncGenerator[Any, None], super()._serve_watch(request))) as stream:
            async for item in stream:
                if isinstance(item, dict) and item.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    if selects is not None:
                        item = _through(item, selects, shown)
                        if item is None:
                            continue
                    if self.on_watch_event is not None:
                        self.on_watch_event(request, item)
                yield item


def _through(event: dict[str, Any], selects: Selector,
             shown: set[tuple[str | None, str | None]]) -> dict[str, Any] | None:
    """The event a watch with this selector gets, if any."""
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    key = (meta.get("namespace"), meta.get("name"))
    if event["type"] != "DELETED" and selects(obj):
        if key in shown:
            return event
        shown.add(key)
        return {"type": "ADDED", "object": obj}
    if key in shown:
        shown.discard(key)
        return {"type": "DELETED", "object": obj}
    return None


def declare(api: kmock.KubernetesEmulator, nodes: dict[str, list[str]],
            addresses: dict[str, str] | None = None) -> None:
    for plural, kind, namespaced in (("namespaces", "Namespace", False), ("nodes", "Node", False),
                                     ("pods", "Pod", True), ("events", "Event", True)):
        api.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
    api.objects["v1/namespaces", None, "default"] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}
    for name, cidrs in nodes.items():
        api.objects["v1/nodes", None, name] = {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": str(uuid.uuid4())},
            "spec": {"podCIDRs": cidrs}}
        if addresses and name in addresses:  # as kubelet reports it: daisy chaining's ring reads it
            api.objects["v1/nodes", None, name]["status"] = {
                "addresses": [{"type": "InternalIP", "address": addresses[name]}]}


async def serve(port: int, nodes: dict[str, list[str]], watch_log: IO[str] | None = None,
                addresses: dict[str, str] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(on_watch_event=_logger(watch_log) if watch_log else None) as api, \
            kmock.Server(api, port=port):
        declare(api, nodes, addresses)
        await stop.wait()


def _logger(out: IO[str]) -> WatchListener:
    def log(request: kmock.Request, event: Mapping[str, Any]) -> None:
        at = time.monotonic()
        meta = (event.get("object") or {}).get("metadata") or {}
        out.write(json.dumps({"at": at, "watch": request.params.get("fieldSelector", ""), "type": event["type"],
                              "namespace": meta.get("namespace"), "name": meta.get("name"),
                              "deleting": bool(meta.get("deletionTimestamp"))}) + "\n")
    return log


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-apiserver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lab", help="the lab's run dir (marks the process as the lab's, for `flock lab down`)")
    parser.add_argument("--node", action="append", default=[], help="NAME=CIDR[,CIDR]")
    parser.add_argument("--node-address", action="append", default=[], help="NAME=IP: the Node's InternalIP")
    args = parser.parse_args()
    nodes = {name: cidrs.split(",") for name, cidrs in (n.split("=", 1) for n in args.node)}
    with contextlib.ExitStack() as files:
        log = files.enter_context(open(pathlib.Path(args.lab) / WATCH_LOG, "w", buffering=1)) if args.lab else None
        addresses = dict(n.split("=", 1) for n in args.node_address)
        asyncio.run(serve(args.port, nodes, log, addresses))


if __name__ == "__main__":
    main()
