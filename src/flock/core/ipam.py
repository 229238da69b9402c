"""IPAM: pick a pod's unicast address from the node's pod CIDRs.

Pure. Never hands out a network's own address, its first host (by convention a
gateway's; flock's gateways are link-local, but other tools expect .1 to be special)
or an IPv4 broadcast address, and never an address in ``used``. Addresses are handed
out round-robin after ``after`` (the last one given), so a freed address is not reused
at once while ARP/NDP caches and conntrack still remember it.
"""

from __future__ import annotations

from collections.abc import Collection

from flock.core.model import IPAddress, IPNetwork
from flock.errors import AddressesExhausted


def reserved_addresses(network: IPNetwork) -> set[IPAddress]:
    reserved: set[IPAddress] = {network.network_address}
    if network.num_addresses > 2:
        reserved.add(network.network_address + 1)
    if network.version == 4 and network.num_addresses > 2:
        reserved.add(network.broadcast_address)
    return reserved


def choose_address(network: IPNetwork, used: Collection[IPAddress], after: IPAddress | None = None) -> IPAddress:
    """The first usable, unused address of ``network`` after ``after`` (wrapping around).

    Looks at no more than len(used) + 4 candidates, so a /64 costs nothing.
    Raises AddressesExhausted when every address is reserved or used.
    """
    size = network.num_addresses
    base = int(network.network_address)
    start = (int(after) - base + 1) % size if after is not None and after in network else 0
    blocked = reserved_addresses(network) | {a for a in used if a in network}
    for step in range(min(size, len(blocked) + 1)):
        candidate = type(network.network_address)(base + (start + step) % size)
        if candidate not in blocked:
            return candidate
    raise AddressesExhausted(network)
