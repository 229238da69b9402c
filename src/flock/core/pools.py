"""Pool policy: may this pod use this anycast IP?

An anycast IP must lie in one of the configured ``anycastPools``; a pool with a
``namespaces`` list admits only pods of those namespaces. Anything else is rejected
with a reason a person can act on, and is never routed or advertised.

A pool is a range of host routes, not a subnet on a link, but its edge addresses are
refused all the same, as for pod CIDRs (flock.core.ipam): an IPv4 pool's network and
broadcast addresses (pools of /30 and wider) and an IPv6 pool's subnet-router anycast
address (its all-zeros address, pools of /126 and wider). Clients, firewalls and ACL
templates treat them as non-host addresses, and a kernel that has the pool on a link
answers the subnet-router anycast address itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from flock.core.model import IPAddress
from flock.core.settings import AnycastPool


def pool_rejection(address: IPAddress, namespace: str, pools: Sequence[AnycastPool]) -> str | None:
    """None if some pool admits ``address`` for ``namespace``, else why not."""
    return _pool_rejection(address, namespace, tuple(pools))


@functools.lru_cache(maxsize=1 << 16)
def _pool_rejection(address: IPAddress, namespace: str, pools: tuple[AnycastPool, ...]) -> str | None:
    # Cached: every pass that recomputes a pod's contribution asks again for each of its
    # IPs (20,000 questions for 10,000 two-pod routes at start-up), with the same answers.
    containing = [pool for pool in pools if pool.cidr.version == address.version and address in pool.cidr]
    if not containing:
        if not pools:
            return f"{address} rejected: no anycastPools are configured on this node"
        return f"{address} is outside the anycast pools ({', '.join(str(p.cidr) for p in pools)})"
    edge = next((pool for pool in containing if _edge_address(address, pool)), None)
    if edge is not None:
        what = "subnet-router anycast" if address.version == 6 else (
            "network" if address == edge.cidr.network_address else "broadcast")
        return f"{address} is the {what} address of pool {edge.cidr}, which is never used as an anycast IP"
    if any(pool.namespaces is None or namespace in pool.namespaces for pool in containing):
        return None
    allowed = sorted({ns for pool in containing for ns in pool.namespaces or ()})
    return (f"{address} is in pool {containing[0].cidr}, which namespace {namespace!r} may not use "
            f"(allowed: {', '.join(allowed)})")


def _edge_address(address: IPAddress, pool: AnycastPool) -> bool:
    cidr = pool.cidr
    if cidr.num_addresses < 4:  # /31, /32, /127, /128: every address is a host
        return False
    if address == cidr.network_address:
        return True
    return cidr.version == 4 and address == cidr.broadcast_address


def in_pools(address: IPAddress, pools: Sequence[AnycastPool]) -> bool:
    """Whether any pool contains the address, whatever the namespace."""
    return any(pool.cidr.version == address.version and address in pool.cidr for pool in pools)
