"""Pod plumbing: the veth pair, the pod's addresses and routes, anycast on the pod's lo.

The gateway scheme: every host-side veth carries the same link-local addresses,
169.254.1.1/32 and fe80::1/64, and the pod's default routes point at them
(``default via 169.254.1.1 dev eth0``, ``default via fe80::1 dev eth0``). A pod then
needs no per-node gateway address, the pod CIDR loses no address to a gateway, and the
host answers ARP/NDP for its own address without proxy_arp/proxy_ndp. The node reaches
each pod through a /32 and a /128 route on its veth (``rtm_protocol`` = flock's).

Every function runs on a fresh thread that enters the target network namespace
(setns moves only that thread) and ends afterwards, so no pooled thread is ever left in
a pod's namespace.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flock.adapters import rtnetlink as rtnl
from flock.adapters import sysctl
from flock.adapters.netns import enter as enter_netns
from flock.adapters.netns import named as named_netns
from flock.adapters.rtnetlink import IFA_F_NODAD, RT_SCOPE_LINK, RTM_DELADDR, RTM_NEWADDR, describe_errno
from flock.core.model import GATEWAY_V4, GATEWAY_V6, GATEWAYS, IPAddress
from flock.core.ports import PlumbedPod
from flock.errors import PlumbingError

logger = logging.getLogger(__name__)

T = TypeVar("T")


_ACK_SECONDS = 10.0


async def in_netns(path: str | None, seconds: float, func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` on a new thread inside the netns at ``path`` (None: this one)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            if path is not None:
                enter_netns(path)
            result = func(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="flock-netns", daemon=True).start()
    return await asyncio.wait_for(future, seconds)


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _mac(ipr: IPRoute, index: int) -> str:
    return str(ipr.link("get", index=index)[0].get_attr("IFLA_ADDRESS"))


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _write_addresses(kind: int, addresses: Sequence[tuple[int, IPAddress]]) -> list[int]:
    """Add (RTM_NEWADDR, exclusive) or delete (RTM_DELADDR) host addresses (/32, /128,
    no DAD) in this thread's netns: ``(ifindex, ip)`` each. Returns one errno per address,
    0 where it succeeded (ETIMEDOUT where the kernel did not answer).

    One netlink request per address, sent as one batch (:meth:`RtnlSocket.transact`:
    many per ``send``, acks matched by sequence number): a pod's addresses cost a few
    system calls, not one pyroute2 round trip each (pyroute2 0.9's IPRoute has no batch
    mode). The kernel answers every request of a batch, also after one fails.
    """
    flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL if kind == rtnl.RTM_NEWADDR else 0
    with rtnl.RtnlSocket(_ACK_SECONDS) as sock:
        answers = sock.transact([(kind, flags, rtnl.address_request(index, ip)) for index, ip in addresses])
    return [errno.ETIMEDOUT if answer is None else answer for answer in answers]


def _host_add(host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
              protocol: int, proc: str) -> str:
    with IPRoute() as ipr:
        stale = _index(ipr, host_ifname)
        if stale is not None:  # left by an ADD that did not finish; the record was released
            ipr.link("del", index=stale)
        pod_fd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": ifname, "net_ns_fd": pod_fd})
        finally:
            os.close(pod_fd)
        index = _index(ipr, host_ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"{host_ifname} vanished right after creation")
        sysctl.write(f"net/ipv6/conf/{host_ifname}/accept_dad", "0", proc, missing_ok=True)
        # Loose reverse-path filtering: a terminating pod's in-flight replies (source = the
        # anycast IP) must pass once its next hop has left the anycast route.
        sysctl.write(f"net/ipv4/conf/{host_ifname}/rp_filter", "2", proc, missing_ok=True)
        ipr.addr("add", index=index, address=str(GATEWAY_V4), prefixlen=32)
        ipr.addr("add", index=index, address=str(GATEWAY_V6), prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=index, state="up")
        for ip in pod_ips:
            ipr.route("add", family=_family(ip), dst=str(ip), dst_len=ip.max_prefixlen, oif=index,
                      scope=RT_SCOPE_LINK, proto=protocol)
        return _mac(ipr, index)


def _pod_add(ifname: str, pod_ips: Sequence[IPAddress], anycast: Sequence[IPAddress], proc: str) -> str:
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"{ifname} did not arrive in the pod's netns")
        sysctl.write(f"net/ipv6/conf/{ifname}/accept_dad", "0", proc, missing_ok=True)
        ipr.link("set", index=index, state="up")
        lo = _index(ipr, "lo")
        assert lo is not None
        ipr.link("set", index=lo, state="up")
        # Anycast lives on lo, never on eth0: replicas sharing an IP would fight over ARP/NDP/DAD.
        wanted = [(index, ip) for ip in pod_ips] + [(lo, ip) for ip in anycast]
        errnos = _write_addresses(RTM_NEWADDR, wanted)
        # An anycast IP already on lo was left by an ADD cut short by an agent crash: keep it.
        added_to_lo = [(dev, ip) for (dev, ip), error in zip(wanted, errnos, strict=True) if dev == lo and error == 0]
        failed = [(dev, ip, error) for (dev, ip), error in zip(wanted, errnos, strict=True)
                  if error and not (dev == lo and error == errno.EEXIST)]
        try:
            if failed:
                dev, ip, error = failed[0]
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                raise OSError(error, f"add {ip} to {'lo' if dev == lo else ifname}: {os.strerror(error)}{more}")
            if any(ip.version == 4 for ip in pod_ips):
                ipr.route("add", dst=str(GATEWAY_V4), dst_len=32, oif=index, scope=RT_SCOPE_LINK)
                ipr.route("add", dst="0.0.0.0", dst_len=0, gateway=str(GATEWAY_V4), oif=index)
            if any(ip.version == 6 for ip in pod_ips):
                ipr.route("add", family=socket.AF_INET6, dst="::", dst_len=0, gateway=str(GATEWAY_V6), oif=index)
            return _mac(ipr, index)
        except BaseException:
            # Nothing half-done: eth0's addresses go with the veth when the ADD is released,
            # lo's must be taken back here.
            _write_addresses(RTM_DELADDR, added_to_lo)
            raise


def _peer_index(host_ifname: str) -> tuple[int, int] | None:
    """(index of the host veth, index of its peer in the peer's netns), None if absent."""
    with IPRoute() as ipr:
        index = _index(ipr, host_ifname)
        if index is None:
            return None
        peer = ipr.link("get", index=index)[0].get_attr("IFLA_LINK")
        return (index, int(peer)) if peer else None


def _name_of_peer(peer_index: int, host_index: int) -> str | None:
    """The name of interface ``peer_index`` here, if it is the veth peer of ``host_index``."""
    with IPRoute() as ipr:
        try:
            link = ipr.link("get", index=peer_index)[0]
        except NetlinkError:
            return None
        return str(link.get_attr("IFLA_IFNAME")) if link.get_attr("IFLA_LINK") == host_index else None


def _host_delete(host_ifname: str) -> bool:
    with IPRoute() as ipr:
        index = _index(ipr, host_ifname)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
        return True


def _host_check(host_ifname: str, pod_ips: Sequence[IPAddress], protocol: int) -> list[str]:
    problems = []
    with IPRoute() as ipr:
        index = _index(ipr, host_ifname)
        if index is None:
            return [f"host veth {host_ifname} is missing"]
        if ipr.link("get", index=index)[0].get_attr("IFLA_OPERSTATE") != "UP":
            problems.append(f"host veth {host_ifname} is not up")
        for ip in pod_ips:
            routes = ipr.route("dump", family=_family(ip), dst=str(ip), dst_len=ip.max_prefixlen,
                               proto=protocol)
            if not any(r.get_attr("RTA_OIF") == index for r in routes):
                problems.append(f"host route {ip}/{ip.max_prefixlen} dev {host_ifname} is missing")
    return problems


def _pod_check(ifname: str, pod_ips: Sequence[IPAddress], anycast: Sequence[IPAddress]) -> list[str]:
    problems = []
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return [f"{ifname} is missing in the pod's netns"]
        have = {(a.get_attr("IFA_ADDRESS"), a["index"]) for a in ipr.addr("dump")}
        lo = _index(ipr, "lo")
        for ip in pod_ips:
            if (str(ip), index) not in have:
                problems.append(f"{ip} is not on {ifname}")
        for ip in anycast:
            if (str(ip), lo) not in have:
                problems.append(f"anycast {ip} is not on lo")
        for ip in pod_ips:
            family = _family(ip)
            defaults = [r for r in ipr.route("dump", family=family) if r["dst_len"] == 0]
            if not any(r.get_attr("RTA_GATEWAY") == str(GATEWAYS[ip.version]) for r in defaults):
                problems.append(f"IPv{ip.version} default route via {GATEWAYS[ip.version]} is missing")
    return problems


class PodNetwork:
    """Sets up, checks and tears down pods' networks from the node's netns."""

    def __init__(self, *, host_netns: str | None, protocol: int, timeout: float = 30.0,
                 proc: str = "/proc") -> None:
        self.host_path = named_netns(host_netns) if host_netns else None
        self.protocol = protocol
        self.timeout = timeout
        self.proc = proc

    async def add(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                  anycast: Sequence[IPAddress]) -> PlumbedPod:
        try:
            host_mac = await in_netns(self.host_path, self.timeout, _host_add, host_ifname, ifname,
                                      pod_netns, pod_ips, self.protocol, self.proc)
            pod_mac = await in_netns(pod_netns, self.timeout, _pod_add, ifname, pod_ips, anycast, self.proc)
        except (OSError, NetlinkError, TimeoutError) as exc:
            raise PlumbingError(f"set up {host_ifname} <-> {ifname} in {pod_netns}: {_describe(exc)}") from exc
        return PlumbedPod(host_mac=host_mac, pod_mac=pod_mac)

    async def netns_exists(self, path: str) -> bool:
        """Whether a network namespace file (CNI_NETNS) exists."""
        return await asyncio.to_thread(os.path.exists, path)

    async def pod_ifname(self, *, host_ifname: str, pod_netns: str) -> str | None:
        """The name of ``host_ifname``'s peer in ``pod_netns``; None if there is none there."""
        try:
            indexes = await in_netns(self.host_path, self.timeout, _peer_index, host_ifname)
            if indexes is None:
                return None
            host_index, peer_index = indexes
            return await in_netns(pod_netns, self.timeout, _name_of_peer, peer_index, host_index)
        except (OSError, NetlinkError, TimeoutError) as exc:
            raise PlumbingError(f"look up {host_ifname}'s peer in {pod_netns}: {_describe(exc)}") from exc

    async def delete(self, host_ifname: str) -> bool:
        """Remove the veth pair (its routes go with it). False if it was already gone."""
        try:
            return await in_netns(self.host_path, self.timeout, _host_delete, host_ifname)
        except (OSError, NetlinkError, TimeoutError) as exc:
            raise PlumbingError(f"delete {host_ifname}: {_describe(exc)}") from exc

    async def check(self, *, host_ifname: str, ifname: str, pod_netns: str, pod_ips: Sequence[IPAddress],
                    anycast: Sequence[IPAddress]) -> list[str]:
        try:
            problems = await in_netns(self.host_path, self.timeout, _host_check, host_ifname, pod_ips,
                                      self.protocol)
            problems += await in_netns(pod_netns, self.timeout, _pod_check, ifname, pod_ips, anycast)
        except (OSError, NetlinkError, TimeoutError) as exc:
            raise PlumbingError(f"check {host_ifname} <-> {ifname} in {pod_netns}: {_describe(exc)}") from exc
        return problems

    async def enable_forwarding(self) -> list[str]:
        """IPv4 and IPv6 forwarding in the node's netns (pods' traffic is routed). Warnings."""
        return await in_netns(self.host_path, self.timeout, sysctl.write_each,
                              ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"), "1", self.proc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return describe_errno(exc.code)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc)
