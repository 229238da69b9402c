"""Pool policy: may this pod use this anycast IP?

An anycast IP must lie in one of the configured ``anycastPools``; a pool with a
``namespaces`` list admits only pods of those namespaces. Anything else is rejected
with a reason a person can act on, and is never routed or advertised.
"""

from __future__ import annotations

from collections.abc import Sequence

from flock.config import AnycastPool
from flock.model import IPAddress


def pool_rejection(address: IPAddress, namespace: str, pools: Sequence[AnycastPool]) -> str | None:
    """None if some pool admits ``address`` for ``namespace``, else why not."""
    containing = [pool for pool in pools if pool.cidr.version == address.version and address in pool.cidr]
    if not containing:
        if not pools:
            return f"{address} rejected: no anycastPools are configured on this node"
        return f"{address} is outside the anycast pools ({', '.join(str(p.cidr) for p in pools)})"
    if any(pool.namespaces is None or namespace in pool.namespaces for pool in containing):
        return None
    allowed = sorted({ns for pool in containing for ns in pool.namespaces or ()})
    return (f"{address} is in pool {containing[0].cidr}, which namespace {namespace!r} may not use "
            f"(allowed: {', '.join(allowed)})")


def in_pools(address: IPAddress, pools: Sequence[AnycastPool]) -> bool:
    """Whether any pool contains the address, whatever the namespace."""
    return any(pool.cidr.version == address.version and address in pool.cidr for pool in pools)
