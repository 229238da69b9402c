"""Allocation records rebuilt from the kernel: what a quarantined record no longer says.

Pure. A record that cannot be parsed is moved aside at start-up (flock.adapters.store), but its
pod is usually still running: its host veth ``flock<8 hex>`` still routes the pod's
addresses and may be a next hop of anycast routes. Forgetting it would take the pod out
of its routes without a word, hand its addresses to the next pod while the veth still
routes them (every such ADD then fails with "File exists"), and let a new container
take over its veth name. So every flock veth that no record owns is written back as a
*committed* record, from what the kernel shows:

- the veth's name (``host_ifname``);
- the pod's addresses: the veth's /32 and /128 routes of flock's protocol, and the
  ``via`` of every anycast next hop on it;
- the pod's anycast IPs: the anycast routes with a next hop on the veth, plus the
  anycast list of the damaged record if that part of it survived;
- the container id and the pod (namespace, name, uid): from the damaged record, read
  tolerantly (a truncated record usually still holds them). A veth whose record cannot
  be found or read gets a placeholder container id (:data:`PLACEHOLDER_PREFIX` + the
  veth's name) and no pod: it keeps its addresses and name reserved and is routed no
  more, until the veth is gone (then :func:`plan_recovery` releases the record).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from flock.core.model import Allocation, AllocationState, ContainerID, IPAddress, PodRef, address_sort_key

PLACEHOLDER_PREFIX = "recovered-"
"""Container id prefix of a rebuilt record whose real container id is not known."""

MAX_SALVAGE_BYTES = 64 * 1024
"""How much of a damaged record is searched (a real record is well under 4 KiB)."""

_FLOCK_VETH = re.compile(r"flock[0-9a-f]{8}")
_QUARANTINED = re.compile(r"(?P<container>[^/]+)\.json\.(?P<time>[0-9]+)")
# A JSON string value with no escapes; a string cut off by the truncation never matches.
_STRING = r'"{key}"\s*:\s*"(?P<value>[^"\\\x00-\x1f]{{0,{limit}}})"'
_ARRAY = r'"{key}"\s*:\s*\[(?P<items>[^\[\]{{}}]{{0,8192}})\]'
_POD_OBJECT = re.compile(r'"pod"\s*:\s*\{(?P<body>[^{}]{0,2048})')
_KUBE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}")


@dataclasses.dataclass(frozen=True)
class KernelVeth:
    """A host veth of flock's as the kernel shows it: what it routes, and through it."""

    name: str
    pod_ips: tuple[IPAddress, ...] = ()  # its /32 and /128 routes, and the vias of next hops on it
    anycast: tuple[IPAddress, ...] = ()  # anycast routes with a next hop on it


@dataclasses.dataclass(frozen=True)
class Salvaged:
    """What could be read from a damaged record; None/() where nothing could."""

    container_id: str | None = None
    pod: PodRef | None = None
    host_ifname: str | None = None
    anycast: tuple[IPAddress, ...] = ()


class Quarantined(NamedTuple):
    """A record moved to ``<stateDir>/quarantine``: its file name and (the start of) its text."""

    file_name: str
    """``<container id>.json.<unix time>``: the container id survives a damaged text."""
    text: str
    """The damaged record's text, at most :data:`MAX_SALVAGE_BYTES` of it."""


@dataclasses.dataclass(frozen=True)
class Recovered:
    """One record rebuilt from the kernel, and what to tell a person about it."""

    allocation: Allocation
    pod_known: bool
    message: str


@dataclasses.dataclass(frozen=True)
class RecoveryPlan:
    recovered: tuple[Recovered, ...]
    """Records to write: one per flock veth no record owned."""
    released: tuple[Allocation, ...]
    """Placeholder records whose veth is gone: the kernel no longer uses their addresses."""


def is_flock_veth(name: str) -> bool:
    """Whether a link name is one of flock's host veths, ``flock`` + 8 lowercase hex."""
    return _FLOCK_VETH.fullmatch(name) is not None


def quarantined_container_id(file_name: str) -> str | None:
    """The container id in a quarantined record's file name, ``<container id>.json.<unixtime>``."""
    match = _QUARANTINED.fullmatch(file_name)
    if match is None or not _CONTAINER_ID.fullmatch(match["container"]):
        return None
    return match["container"]


def quarantine_time(file_name: str) -> int:
    """When a record was quarantined (the file name's unixtime suffix); 0 if it has none."""
    match = _QUARANTINED.fullmatch(file_name)
    return int(match["time"]) if match else 0


def salvage(text: str) -> Salvaged:
    """Read what a damaged record still says: container id, pod, veth, anycast list.

    Tolerant (a truncated or partly overwritten record) and bounded: only the first
    :data:`MAX_SALVAGE_BYTES` characters are searched, and a value is taken only when
    it is complete and well-formed. The pod needs at least its namespace and name.
    """
    text = text[:MAX_SALVAGE_BYTES]
    container = _string(text, "containerID", 256)
    if container is not None and not _CONTAINER_ID.fullmatch(container):
        container = None
    ifname = _string(text, "hostIfname", 15)
    if ifname is not None and not is_flock_veth(ifname):
        ifname = None
    return Salvaged(container_id=container, pod=_pod(text), host_ifname=ifname,
                    anycast=_address_list(text, "anycast"))


def _string(text: str, key: str, limit: int) -> str | None:
    match = re.search(_STRING.format(key=key, limit=limit), text)
    return match["value"] if match else None


def _pod(text: str) -> PodRef | None:
    match = _POD_OBJECT.search(text)
    if match is None:
        return None
    body = match["body"]
    namespace, name = _string(body, "namespace", 253), _string(body, "name", 253)
    if namespace is None or name is None or not _KUBE_NAME.fullmatch(namespace) or not _KUBE_NAME.fullmatch(name):
        return None
    uid = _string(body, "uid", 128) or ""
    return PodRef(namespace=namespace, name=name, uid=uid)


def _address_list(text: str, key: str) -> tuple[IPAddress, ...]:
    match = re.search(_ARRAY.format(key=key), text)
    if match is None:
        return ()
    addresses = []
    for item in re.findall(r'"([^"]{1,64})"', match["items"]):
        try:
            addresses.append(ipaddress.ip_address(item))
        except ValueError:
            continue
    return _sorted(addresses)


def _sorted(addresses: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(set(addresses), key=address_sort_key))


def plan_recovery(
    *,
    veth_names: Collection[str],
    unowned: Sequence[KernelVeth],
    records: Sequence[Allocation],
    quarantined: Sequence[Quarantined],
    names_of: Callable[[str], Iterable[str]],
) -> RecoveryPlan:
    """Which records to rebuild and which placeholder records to release.

    ``veth_names``: every flock veth in the node's netns; ``unowned``: those no record
    owns, with their routes; ``records``: the records loaded; ``quarantined``: damaged
    records (the newest first wins when two name one veth); ``names_of``: the veth
    names a container id may have been given (flock.cniserver.host_ifname).
    """
    by_veth: dict[str, tuple[str, Salvaged]] = {}
    for entry in sorted(quarantined, key=lambda q: quarantine_time(q.file_name), reverse=True):
        salvaged = salvage(entry.text)
        named = quarantined_container_id(entry.file_name)
        for container in dict.fromkeys(c for c in (named, salvaged.container_id) if c is not None):
            for name in names_of(container):
                by_veth.setdefault(name, (container, salvaged))
        if named is not None and salvaged.host_ifname is not None:
            by_veth.setdefault(salvaged.host_ifname, (named, salvaged))

    taken = {allocation.container_id for allocation in records}
    recovered = []
    for veth in sorted(unowned, key=lambda v: v.name):
        container, salvaged = placeholder_id(veth.name), Salvaged()
        found = by_veth.get(veth.name)
        if found is not None and found[0] not in taken:  # else: the id is another record's now
            container, salvaged = ContainerID(found[0]), found[1]
        taken.add(container)
        recovered.append(rebuild(veth, container, salvaged))

    released = tuple(a for a in records
                     if a.container_id.startswith(PLACEHOLDER_PREFIX) and a.host_ifname not in veth_names)
    return RecoveryPlan(recovered=tuple(recovered), released=released)


def placeholder_id(veth_name: str) -> ContainerID:
    return ContainerID(PLACEHOLDER_PREFIX + veth_name)


def rebuild(veth: KernelVeth, container: ContainerID, salvaged: Salvaged) -> Recovered:
    """A committed record for a veth, and the message for the pod's (or node's) Event."""
    pod = salvaged.pod
    anycast = _sorted((*veth.anycast, *salvaged.anycast))
    allocation = Allocation(
        container_id=container,
        pod=pod or PodRef(namespace="", name="", uid=""),
        host_ifname=veth.name,
        pod_ips=_sorted(veth.pod_ips),
        anycast=anycast,
        state=AllocationState.COMMITTED,
    )
    found = (f"veth {veth.name}, pod IPs {_list(allocation.pod_ips)}, "
             f"anycast {_list(allocation.anycast)}")
    if pod is not None:
        message = (f"the allocation record of container {container} was damaged and rebuilt "
                   f"from the kernel: {found}")
    else:
        until = ("the veth goes" if container.startswith(PLACEHOLDER_PREFIX)
                 else f"a CNI DEL of container {container}")
        message = (f"veth {veth.name} belongs to no readable allocation record and its pod is unknown; "
                   f"its addresses stay reserved and it is routed no more until {until}: {found}")
    return Recovered(allocation=allocation, pod_known=pod is not None, message=message)


def _list(addresses: Sequence[IPAddress]) -> str:
    return ", ".join(map(str, addresses)) or "none"
