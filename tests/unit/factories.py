"""Small builders for unit tests: allocations, pod bodies (configs: tests/support/config.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from flock.core.annotation import parse_anycast
from flock.core.model import Allocation, AllocationState, ContainerID, PodRef, PodStatus
from flock.core.settings import AnycastPool

POOLS = (
    AnycastPool(ipaddress.ip_network("198.51.100.0/24")),
    AnycastPool(ipaddress.ip_network("2001:db8:100::/64")),
)


def alloc(name: str, ips: tuple[str, ...] = ("192.0.2.10", "2001:db8::10"),
          anycast: tuple[str, ...] = ("198.51.100.10",), *, namespace: str = "default",
          committed: bool = True, uid: str = "", dev: str | None = None) -> Allocation:
    return Allocation(
        container_id=ContainerID(f"c-{namespace}-{name}"),
        pod=PodRef(namespace, name, uid),
        host_ifname=dev or f"flock{abs(hash((namespace, name))) % 16**8:08x}",
        pod_ips=tuple(ipaddress.ip_address(i) for i in ips),
        anycast=tuple(ipaddress.ip_address(i) for i in anycast),
        state=AllocationState.COMMITTED if committed else AllocationState.PENDING,
    )


def status(name: str, eligible: bool = True, *, namespace: str = "default", uid: str = "",
           reason: str = "", listed: tuple[str, ...] | None = None) -> tuple[tuple[str, str], PodStatus]:
    """A pod's watched status; ``listed``: the IPs its annotation lists now (None: unknown)."""
    if not eligible and not reason:
        reason = "not ready"
    anycast = None if listed is None else frozenset(ipaddress.ip_address(a) for a in listed)
    written = None if listed is None else parse_anycast(" ".join(listed))
    return (namespace, name), PodStatus(PodRef(namespace, name, uid), eligible, reason, anycast, written)


def pod_body(name: str, *, ready: bool = True, terminating: bool = False, node: str = "node-a",
             namespace: str = "default", uid: str = "", anycast: str = "",
             when_terminating: str | None = None) -> dict[str, Any]:
    """``when_terminating``: the flock.io/anycast-terminating annotation, if any."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"}
    if anycast:
        meta["annotations"] = {"flock.io/anycast": anycast}
    if when_terminating is not None:
        meta.setdefault("annotations", {})["flock.io/anycast-terminating"] = when_terminating
    if terminating:
        meta["deletionTimestamp"] = "2026-11-26T10:00:00Z"
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
