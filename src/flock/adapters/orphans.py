"""Start-up: flock veths that no allocation record owns are written back as records.

The adapter half of flock.core.recovery. It reads the node netns's ``flock<8 hex>`` links
and flock's routes through them (pyroute2, on a fresh thread inside ``hostNetns``, as
flock.adapters.plumbing does), takes what the quarantined records still say from the store,
writes the rebuilt records and releases placeholder records whose veth is gone. It runs
once, after the store is loaded and before routes are adopted or any CNI request is
served, so the reconciler and IPAM see the rebuilt records like any other: the pod stays
in its routes, its addresses and veth name are given to no one else. Afterwards every
flock veth has a record, so IPAM's "addresses in records" is every address a veth holds.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Collection

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.adapters.store import AllocationStore
from flock.core.model import Event, IPAddress, ObjectRef, host_ifname
from flock.core.recovery import KernelVeth, is_flock_veth, plan_recovery
from flock.core.settings import AgentConfig
from flock.errors import RouteError

logger = logging.getLogger(__name__)

REASON = "AllocationRecovered"
_RT_TABLE_MAIN = 254
_TIMEOUT = 30.0  # seconds for the whole read
_NAME_ATTEMPTS = 8  # collisions of 32-bit names need several live containers: 8 is plenty


async def recover_orphans(store: AllocationStore, config: AgentConfig) -> list[Event]:
    """Rebuild a record for every flock veth no record owns; one Warning Event for each.

    The Event is on the Pod when the damaged record still names it, else on the Node.
    Raises RouteError when the kernel cannot be read, StateError when a record cannot
    be written.
    """
    owned = frozenset(allocation.host_ifname for allocation in store.all())
    names, unowned = await read_flock_veths(host_netns=config.host_netns, protocol=config.route_protocol,
                                            owned=owned)
    quarantined = await store.quarantined() if unowned else []
    plan = plan_recovery(veth_names=names, unowned=unowned, records=store.all(), quarantined=quarantined,
                         names_of=lambda container: [host_ifname(container, n) for n in range(_NAME_ATTEMPTS)])
    for allocation in plan.released:
        logger.warning("releasing the placeholder record of a veth that is gone dev=%s ips=%s",
                       allocation.host_ifname, ",".join(map(str, allocation.pod_ips)) or "-")
        await store.remove(allocation.container_id)
    events = []
    node = ObjectRef(kind="Node", name=config.node_name)
    for recovered in plan.recovered:
        allocation = recovered.allocation
        await store.put(allocation)
        logger.warning("allocation recovered from the kernel pod=%s container=%s: %s",
                       allocation.pod if recovered.pod_known else "-", allocation.container_id[:24],
                       recovered.message)
        if recovered.pod_known:
            pod = allocation.pod
            involved = ObjectRef(kind="Pod", name=pod.name, namespace=pod.namespace, uid=pod.uid)
        else:
            involved = node
        events.append(Event(involved, "Warning", REASON, recovered.message))
    return events


async def read_flock_veths(*, host_netns: str | None, protocol: int,
                           owned: Collection[str]) -> tuple[frozenset[str], list[KernelVeth]]:
    """(every flock veth's name, the unowned ones with what they route) in the node netns.

    Routes are dumped only when some flock veth is not in ``owned``. Raises RouteError.
    """
    path = named_netns(host_netns) if host_netns else None
    try:
        return await in_netns(path, _TIMEOUT, _read, protocol, frozenset(owned))
    except (OSError, NetlinkError, TimeoutError) as exc:
        where = f" in netns {host_netns}" if host_netns else ""
        raise RouteError(f"read flock's veths and routes{where}: {_describe(exc)}") from exc


def _read(protocol: int, owned: frozenset[str]) -> tuple[frozenset[str], list[KernelVeth]]:
    with IPRoute() as ipr:
        names: dict[int, str] = {}
        for link in ipr.link("dump"):
            name = link.get_attr("IFLA_IFNAME")
            if isinstance(name, str) and is_flock_veth(name):
                names[int(link["index"])] = name
        unowned = {index: name for index, name in names.items() if name not in owned}
        if not unowned:
            return frozenset(names.values()), []
        pod_ips: dict[int, set[IPAddress]] = defaultdict(set)
        anycast: dict[int, set[IPAddress]] = defaultdict(set)
        for family, length in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
            for route in ipr.route("dump", family=family, proto=protocol):
                dst = route.get_attr("RTA_DST")
                table = route.get_attr("RTA_TABLE") or route["table"]
                if dst is None or route["dst_len"] != length or table != _RT_TABLE_MAIN:
                    continue
                address = ipaddress.ip_address(dst)
                multipath = route.get_attr("RTA_MULTIPATH")
                if multipath:
                    hops = [(hop.get_attr("RTA_GATEWAY"), hop["oif"]) for hop in multipath]
                else:
                    hops = [(route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF"))]
                for gateway, oif in hops:
                    if oif not in unowned:
                        continue
                    if gateway is None:  # the pod's own /32 or /128 on its veth
                        pod_ips[oif].add(address)
                    else:  # an anycast next hop: via the pod's address on its veth
                        anycast[oif].add(address)
                        pod_ips[oif].add(ipaddress.ip_address(gateway))
    veths = [KernelVeth(name, tuple(pod_ips[index]), tuple(anycast[index])) for index, name in unowned.items()]
    return frozenset(names.values()), veths


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (netlink {exc.code})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or os.strerror(exc.errno or errno.EIO)
    return str(exc)
