"""What the agent knows of its node's Pods, from the API watch (and periodic re-lists).

Holds only what the reconciler needs (a :class:`PodStatus` per pod) plus each pod's
object reference for Events. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flock.core.annotation import (
    ANNOTATION,
    LAST_RESORT,
    MAX_ANYCAST_PER_POD_LIMIT,
    TERMINATING_ANNOTATION,
    parse_anycast,
    parse_terminating,
)
from flock.core.eligibility import READY_AND_NOT_TERMINATING, READY_ONLY, ineligibility_reason
from flock.core.model import IPAddress, PodRef, PodStatus


def pod_ref(body: Mapping[str, Any]) -> PodRef:
    meta = body.get("metadata") or {}
    return PodRef(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                  uid=str(meta.get("uid") or ""))


def pod_status(body: Mapping[str, Any], rule: str = READY_AND_NOT_TERMINATING,
               before: PodStatus | None = None, limit: int = MAX_ANYCAST_PER_POD_LIMIT) -> PodStatus:
    """The pod's status; ``before``: the pod's previous status, if any.

    While an entry of the annotation does not parse, the pod keeps the anycast IPs of its
    last annotation that did (``before``), so a typo in an edit withdraws nothing and
    brings nothing back. ``limit``: the most anycast IPs a pod may have.
    """
    reason = ineligibility_reason(body, rule)
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ANNOTATION)
    parsed = parse_anycast(text if isinstance(text, str) else None, limit)
    anycast: frozenset[IPAddress] | None = frozenset(parsed.addresses)
    if parsed.error_count:
        anycast = before.anycast if before is not None else None
    policy_text = annotations.get(TERMINATING_ANNOTATION)
    policy, problem = parse_terminating(policy_text if isinstance(policy_text, str) else None)
    ready = ineligibility_reason(body, READY_ONLY) is None
    return PodStatus(ref=pod_ref(body), eligible=reason is None, reason=reason or "",
                     anycast=anycast, annotation=parsed,
                     last_resort=reason == "terminating" and ready and policy == LAST_RESORT,
                     policy_problem=problem)


class PodCache:
    """This node's pods by (namespace, name)."""

    def __init__(self, node_name: str, rule: str = READY_AND_NOT_TERMINATING,
                 max_anycast: int = MAX_ANYCAST_PER_POD_LIMIT) -> None:
        self.node_name = node_name
        self.rule = rule
        self.max_anycast = max_anycast
        self._pods: dict[tuple[str, str], PodStatus] = {}
        self._bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
        # Watch events are numbered, so a full LIST answered before an event cannot undo it.
        self._serial = 0
        self._watched: dict[tuple[str, str], int] = {}  # pod -> number of its latest watch event

    def watch_serial(self) -> int:
        """Take this before sending a LIST, and give it to :meth:`replace_all`."""
        return self._serial

    def snapshot(self) -> dict[tuple[str, str], PodStatus]:
        return dict(self._pods)

    def body(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._bodies.get((namespace, name))

    def _on_this_node(self, body: Mapping[str, Any]) -> bool:
        # The API applies the field selector; check again, cheaply, in case a server doesn't.
        return (body.get("spec") or {}).get("nodeName") == self.node_name

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Apply one watch event. True if eligibility changed (the reconciler should run now)."""
        ref = pod_ref(body)
        key = (ref.namespace, ref.name)
        self._serial += 1
        self._watched[key] = self._serial
        before = self._pods.get(key)
        if event_type == "DELETED" or not self._on_this_node(body):
            self._pods.pop(key, None)
            self._bodies.pop(key, None)
            return before is not None
        after = pod_status(body, self.rule, before, self.max_anycast)
        self._pods[key] = after
        self._bodies[key] = body
        return before != after

    def replace_all(self, bodies: Iterable[Mapping[str, Any]], since: int) -> bool:
        """Replace the cache with a full list (repairs events lost across a watch gap).

        ``since`` is :meth:`watch_serial` from before the LIST was sent: a pod with a watch
        event after it keeps the watch's view (e.g. a deletionTimestamp the list predates).
        """
        newer = {key for key, serial in self._watched.items() if serial > since}
        new_bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
        new_pods: dict[tuple[str, str], PodStatus] = {}
        for body in bodies:
            ref = pod_ref(body)
            key = (ref.namespace, ref.name)
            if self._on_this_node(body) and key not in newer:
                new_bodies[key] = body
                new_pods[key] = pod_status(body, self.rule, self._pods.get(key), self.max_anycast)
        for key in newer & set(self._pods):  # the watch's view, as it is
            new_bodies[key], new_pods[key] = self._bodies[key], self._pods[key]
        changed = new_pods != self._pods
        self._pods, self._bodies = new_pods, new_bodies
        self._watched = {key: serial for key, serial in self._watched.items() if serial > since}
        return changed
