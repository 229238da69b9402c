"""The kernel adapter: flock's anycast host routes, read and written over netlink.

:class:`NetlinkRoutes` is the only place flock touches the routing table. It runs all
netlink work on one dedicated worker thread, which lives in ``hostNetns`` (setns moves
one thread, not the process), and awaits it from the event loop, which never blocks on
the kernel. :class:`flock.testing.FakeRoutes` is the in-memory stand-in for
unit tests. Every netlink failure leaves this module as a :class:`~flock.errors.RouteError`.

Writes and reads go over one raw rtnetlink socket (:class:`flock.adapters.rtnetlink.RtnlSocket`),
opened on the worker thread after it entered ``hostNetns`` (flock.adapters.netns). A
prefix flock already routes is written with ``replace`` (NLM_F_REPLACE|NLM_F_CREATE), a
new one with ``add`` (NLM_F_CREATE|NLM_F_EXCL, see below); both with
``proto=<routeProtocol>``, table main, scope universe and
no metric: the metric is part of a route's key, so all of flock's routes share the
kernel default (0 for IPv4, 1024 for IPv6). One next hop is written in the plain
``via X dev Y`` shape, several as one RTA_MULTIPATH route; every next hop ``onlink``
(BIRD, which learns these routes, refuses a gateway on no connected prefix). A
withdrawal is a ``replace`` without NLM_F_CREATE to ``proto=<withdrawnRouteProtocol>``
with the same next hops (a route already gone stays gone). Deletes carry ``proto`` too,
so the kernel never deletes another protocol's route for the same prefix (it answers
ESRCH, which counts as "already gone"). ``replace`` itself does not match on protocol:
it would take over a foreign route of the same prefix and metric, which is why a prefix
flock does not route yet is added create-exclusive (EEXIST: flock leaves it alone).

Writes do not go through pyroute2 either. It costs ~0.4 ms per route (5,000 replaces in
~2.1 s), almost all of it message encoding, one call and one round trip per route. So
:meth:`NetlinkRoutes.apply` encodes each edit with ``struct``
(:func:`~flock.adapters.rtnetlink.route_request`, ~2.3 us a route), sends up to 1,024
requests per ``send`` and matches the acks back to the edits by sequence number
(:meth:`~flock.adapters.rtnetlink.RtnlSocket.transact`, which the pod plumbing's address
writes use too). The kernel answers every request of a batch, also after one fails, so
each edit still gets its own result, in order. Measured with bench/passes.py (N anycast
routes of two next hops each, from empty; best of 3, uvloop; ``ip -batch`` of the same
routes in the same run):

                       one pyroute2 call per route       batched (this module)
    1,000 routes       346 ms  (ip -batch 18.5 ms: 18.7x)    11.2 ms  (ip -batch 19.4 ms: 0.58x)
    10,000 routes    3,596 ms  (ip -batch 180 ms:  20.0x)     119 ms  (ip -batch 180 ms:  0.66x)
    install, 1,000     419 ms  (22.7x)                        73 ms  (3.7x)
    install, 10,000  3,979 ms  (22.1x)                       583 ms  (3.2x)

The first pass ("install") is now mostly the reconciler's and BIRD's work: the routes
are ~20% of it. Of the ~119 ms for 10,000 routes, encoding is ~23 ms and the kernel
(``ip -batch`` pays one send and one ack read per route) the rest.

Batches are sent *quiet* (``RtnlSocket.transact(quiet=True)``): only each send's last
request asks for an ack; the kernel answers a refusal anyway, in order, so every
request before the last one's answer that got none succeeded. 10,000 routes then cost
~10 reads instead of 10,000, and the kernel builds no ack for a success. Routes only,
bench/passes.py, best of 3 (``ip -batch`` of the same requests in the same run; in
resilient mode the same members, groups and routes):

                          acked              quiet
    multipath,  1,000   14.9 ms (0.80x)    10.4 ms (0.47x)
    multipath, 10,000    128 ms (0.74x)     110 ms (0.61x)
    resilient,  1,000   35.2 ms            28.5 ms (0.69x)
    resilient, 10,000    394 ms             292 ms (0.80x)

In resilient mode the garbage walk (which groups and members no route uses, over all
of them) ran after every batch of 1,000 edits: 24 ms of a 10,000-route first pass that
leaves no garbage. It runs only after something may have left some
(:attr:`~flock.adapters.nhgroups.NexthopState.litter`).

Reads do not go through pyroute2. Why, measured on this machine with
bench/route_dump.py (5,000 flock routes: 508 IPv4 + 4,492 IPv6, a third of them
multipath, beside 5,000 IPv6 routes of another protocol; best of 7, uvloop):

    pyroute2 IPRoute.route('dump', proto=N), into {address: Nexthops}   ~1,300 ms
    ip -j route show table main proto N (-4 and -6), JSON decoded only     ~27 ms
    ip -j ..., into the same {address: Nexthops}                           ~95 ms
    NetlinkRoutes.dump() (the kernel's part: ~9 ms)                        ~48 ms

pyroute2 0.9.7 filters ``proto`` in Python after decoding every route of the table
(its dump request carries rtm_protocol=0, even with strict_check=True; seen with
strace), and decoding costs it ~0.1-0.2 ms per message. So :meth:`NetlinkRoutes.dump`
sends its own RTM_GETROUTE with NETLINK_GET_STRICT_CHK on, rtm_table=main and
rtm_protocol=N, which the kernel (>= 4.20) filters itself, and unpacks the few
attributes it needs with ``struct`` (:mod:`flock.adapters.rtnetlink`). That is as fast
as ``ip -j`` once either is turned into the table, and needs neither a subprocess nor
iproute2 in the image. The same socket dumps links (ifindex <-> name) cheaply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar, cast

from flock.adapters import nhgroups, sysctl
from flock.adapters import rtnetlink as rtnl
from flock.adapters.netns import enter as enter_netns
from flock.adapters.netns import named as named_netns
from flock.adapters.nhgroups import MULTIPATH, RESILIENT, NexthopState
from flock.adapters.rtnetlink import (
    IFINFOMSG,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    RT_TABLE_MAIN,
    RTM_DELNEXTHOP,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_GETNEXTHOP,
    RTM_GETROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMSG,
    describe_errno,
)
from flock.core.model import IPAddress, Nexthops, host_prefix
from flock.core.routediff import DeleteRoute, KernelRoutes, ReplaceRoute, RouteEdit, WithdrawRoute
from flock.core.settings import ROUTE_PROTOCOLS
from flock.errors import RouteError

log = logging.getLogger(__name__)

T = TypeVar("T")

_APPLY_SLICE: Final = 0.05  # seconds of edits per trip to the worker thread
_EDITS_PER_BATCH: Final = 1000  # edits encoded, sent and answered between looks at the clock


class _RtnlDumper:
    """Kernel-filtered rtnetlink dumps, parsed with ``struct``, on the adapter's socket.

    Used from the worker thread only.
    """

    def __init__(self, sock: rtnl.RtnlSocket, nexthop_ids: range = range(0)) -> None:
        self._sock = sock
        self._nexthop_ids = nexthop_ids
        self._objects: dict[bytes, rtnl.NexthopObject] = {}  # the last next-hop dump's messages, decoded
        self._decoders: dict[tuple[int, int], rtnl.RouteDecoder] = {}  # (family, protocol) -> its decoder
        if not sock.strict:
            # Kernel < 4.20: the dump then covers every route and RouteDecoder's protocol
            # check does the filtering.
            log.warning("netlink strict checking unavailable: route dumps are filtered in Python")

    def dump(self, msg_type: int, body: bytes) -> list[tuple[int, bytearray]]:
        """Every message of one dump as (nlmsg_type, payload); redone if interrupted."""
        return self._sock.dump(msg_type, body)

    def links(self) -> dict[int, str]:
        """ifindex -> name of every link in the namespace."""
        names: dict[int, str] = {}
        request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for kind, msg in self.dump(RTM_GETLINK, request):
            if kind != RTM_NEWLINK:
                continue
            index, name = rtnl.link(msg, 0, len(msg))
            if name is not None:
                names[index] = name
        return names

    def routes(self, family: int,
               protocol: int) -> tuple[list[rtnl.DecodedRoute], set[IPAddress], dict[IPAddress, int]]:
        """flock's routes of one family in the main table, decoded (problems noted), those
        of them with a next hop that is not onlink (BIRD does not learn them), and those
        that use one of flock's next-hop groups (-> its id)."""
        decoder = self._decoders.get((family, protocol))
        if decoder is None:
            decoder = self._decoders[family, protocol] = rtnl.RouteDecoder(family, protocol, self._nexthop_ids)
        request = RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, protocol, 0, 0, 0)
        return decoder.decode(self.dump(RTM_GETROUTE, request)), decoder.not_onlink, decoder.groups

    def nexthops(self) -> list[rtnl.NexthopObject]:
        """Every next-hop object of the namespace (anyone's). Raises OSError where the
        kernel has none (< 5.3)."""
        request = rtnl.NHMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        # A dump mostly repeats the last one: decode only the messages it did not hold
        # (10,000 groups: ~45 ms decoded, ~5 ms looked up).
        known, self._objects = self._objects, {}
        found = []
        for kind, payload in self.dump(RTM_GETNEXTHOP, request):
            if kind != rtnl.RTM_NEWNEXTHOP:
                continue
            msg = bytes(payload)
            obj = known.get(msg) or rtnl.nexthop_object(msg, 0, len(msg))
            self._objects[msg] = obj
            found.append(obj)
        return found


class NetlinkRoutes:
    """flock's anycast host routes in the kernel, over raw rtnetlink, on a thread of its own.

    ``protocol`` is the rtm_protocol tagging flock's advertised routes (config
    ``routeProtocol``), ``withdrawn_protocol`` that of its withdrawn ones (config
    ``withdrawnRouteProtocol``; see :mod:`flock.core.routediff`); ``netns`` a named
    network namespace to work in (config ``hostNetns``; ``None`` = the agent's own);
    ``timeout`` bounds every netlink call, in seconds. Call :meth:`start`
    before anything else and :meth:`close` at the end.

    ``nexthop_groups`` (config ``datapath.nexthopGroups``; the adapter's own default is
    plain multipath, the agent's is resilient): "resilient" routes every prefix through a
    resilient next-hop group of ``buckets`` buckets (:mod:`flock.adapters.nhgroups`),
    "multipath" writes plain routes. :meth:`start` checks that the kernel takes resilient
    groups and falls back to multipath if not: :attr:`mode` is what runs,
    :attr:`fallback` why it is not what was asked (None when it is).
    """

    def __init__(self, *, protocol: int, withdrawn_protocol: int, last_resort_protocol: int,
                 netns: str | None = None, timeout: float = 10.0, proc: str = "/proc",
                 nexthop_groups: str = MULTIPATH, buckets: int = nhgroups.DEFAULT_BUCKETS) -> None:
        numbers = (protocol, withdrawn_protocol, last_resort_protocol)
        for number in numbers:
            if number not in ROUTE_PROTOCOLS:
                raise ValueError(f"route protocol must be {ROUTE_PROTOCOLS.start}-{ROUTE_PROTOCOLS.stop - 1}, "
                                 f"not {number}")
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"the route protocols must differ: {numbers}")
        self.protocol = protocol
        self.withdrawn_protocol = withdrawn_protocol
        self.last_resort_protocol = last_resort_protocol
        self.netns = netns
        self.timeout = timeout
        self.proc = proc  # where procfs is mounted (sysctls); a host /proc in a container
        if nexthop_groups not in nhgroups.MODES:
            raise ValueError(f"nexthop_groups must be one of {nhgroups.MODES}, not {nexthop_groups!r}")
        if buckets not in nhgroups.BUCKETS_RANGE:
            raise ValueError(f"buckets must be {nhgroups.BUCKETS_RANGE.start}-{nhgroups.BUCKETS_RANGE[-1]}")
        self.requested_mode = nexthop_groups
        self.mode = nexthop_groups
        """The mode that runs (known after :meth:`start`)."""
        self.fallback: str | None = None
        """Why :attr:`mode` is multipath although resilient was asked for."""
        self._nh = NexthopState(protocol, buckets)
        self._nh_supported = False  # the kernel has next-hop objects at all
        self.writes = 0
        """Netlink write requests sent (replace and delete, retries included)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Touched on the worker thread only:
        self._sock: rtnl.RtnlSocket | None = None  # dumps and writes alike
        self._dumper: _RtnlDumper | None = None
        self._names: dict[int, str] = {}  # ifindex -> link name
        self._indexes: dict[str, int] = {}  # link name -> ifindex
        self._ignored: set[tuple[int, str]] = set()  # (protocol, problem) reported by the previous dump
        self._unlearnable: set[IPAddress] = set()  # reported by the previous dump
        self._nexthop_names: dict[int, rtnl.NexthopNames] = {}  # protocol -> its namer
        self._route_groups: dict[int, dict[IPAddress, int]] = {}  # protocol -> the last dump's routes' groups

    def __repr__(self) -> str:
        return (f"NetlinkRoutes(protocol={self.protocol}, withdrawn_protocol={self.withdrawn_protocol}, "
                f"last_resort_protocol={self.last_resort_protocol}, netns={self.netns!r})")

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the netlink sockets (in ``netns``) on a fresh worker thread.

        Raises RouteError when the namespace is missing or netlink cannot be opened.
        """
        if self._executor is not None:
            raise RuntimeError(f"{self!r} already started")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="flock-netlink")
        try:
            await self._call(self._open)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the sockets and let the worker thread end. Safe to call twice."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(executor, self._close_sockets),
                                   self.timeout)
        except TimeoutError:
            log.error("netlink worker did not finish in time; abandoning it netns=%s",
                      self.netns)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    def _open(self) -> None:
        # Runs on the worker thread. With a netns, the thread itself moves into it and
        # stays there for its whole life: sockets opened there belong to that netns, and
        # /proc/sys/net seen from the thread is that netns's. pyroute2's own netns mode
        # forks a helper process from this (multi-threaded) process instead, which was
        # seen to deadlock intermittently in the forked child.
        where = f" in netns {self.netns}" if self.netns else ""
        try:
            if self.netns is not None:
                enter_netns(named_netns(self.netns))
            self._sock = rtnl.RtnlSocket(self.timeout, strict=True)
            self._dumper = _RtnlDumper(self._sock, self._nh.group_ids)
            self._refresh_links()
            self._detect_groups()
        except OSError as exc:
            self._close_sockets()
            raise RouteError(f"open netlink{where}: {exc}", errno=exc.errno) from exc

    def _close_sockets(self) -> None:
        sock, self._sock = self._sock, None
        self._dumper = None
        if sock is not None:
            sock.close()

    def _detect_groups(self) -> None:
        """Decide :attr:`mode`: resilient only if asked for and the kernel takes it.

        Tried, not guessed from a version: ``net.ipv4.nexthop_compat_mode`` must be 1 (else
        routes through groups are dumped without next hops, and BIRD learns none), the
        kernel must dump next-hop objects, and, unless a resilient group of flock's exists
        already, it must accept one: a probe member on ``lo`` and a probe group are created
        and deleted again (4 writes, only on a node without flock's groups).
        """
        reason = ""
        try:
            self._nh.load(self._dumper.nexthops() if self._dumper is not None else [])
            self._nh_supported = True
        except OSError as exc:
            self._nh_supported = False
            reason = f"the kernel has no next-hop objects ({exc})"
        if self.requested_mode == MULTIPATH:
            return
        if self._nh_supported:
            reason = self._probe_groups()
        if reason:
            self.mode, self.fallback = MULTIPATH, reason

    def _probe_groups(self) -> str:
        """The empty string if the kernel takes resilient groups, else why not."""
        try:
            with open(f"{self.proc}/sys/net/ipv4/nexthop_compat_mode") as file:
                compat = file.read().strip()
        except OSError:
            compat = "1"  # kernels before 5.14 have no switch: they always expand
        if compat != "1":
            return (f"net.ipv4.nexthop_compat_mode is {compat}: routes through next-hop groups would be "
                    f"dumped without their next hops, which BIRD needs to learn them")
        if any(group.resilient for group in self._nh.groups.values()):
            return ""
        lo = self._ifindex("lo")
        if lo is None or self._sock is None:
            return "no lo device for the probe"
        member, group = self._nh.probe_member, self._nh.probe_group
        requests: list[rtnl.Request] = [
            (rtnl.RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_EXCL, rtnl.device_nexthop_request(member, self.protocol, lo)),
            (rtnl.RTM_NEWNEXTHOP, NLM_F_CREATE | NLM_F_EXCL, rtnl.resilient_group_request(
                group, self.protocol, [member], buckets=self._nh.buckets, idle_timer=nhgroups.IDLE_TIMER,
                unbalanced_timer=nhgroups.UNBALANCED_TIMER)),
            (RTM_DELNEXTHOP, 0, rtnl.nexthop_delete_request(group)),
            (RTM_DELNEXTHOP, 0, rtnl.nexthop_delete_request(member)),
        ]
        self.writes += len(requests)
        answers = self._sock.transact(requests)
        if answers[0] != 0:
            return f"the kernel refused a next-hop object: {describe_errno(answers[0] or errno.ETIMEDOUT)}"
        if answers[1] != 0:
            return f"the kernel refused a resilient group: {describe_errno(answers[1] or errno.ETIMEDOUT)}"
        return ""

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the worker thread, within ``timeout`` seconds."""
        if self._executor is None:
            raise RuntimeError(f"{self!r} is not started")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(func, *args))
        return await asyncio.wait_for(future, self.timeout)

    # -- links --------------------------------------------------------------------

    def _refresh_links(self) -> None:
        if self._dumper is None:
            raise OSError(errno.EBADF, "netlink is closed")
        self._names = self._dumper.links()
        self._indexes = {name: index for index, name in self._names.items()}

    def _ifindex(self, name: str) -> int | None:
        if name not in self._indexes:
            self._refresh_links()
        return self._indexes.get(name)

    def _ifname(self, index: int) -> str | None:
        if index not in self._names:
            self._refresh_links()
        return self._names.get(index)

    # -- reading ------------------------------------------------------------------

    async def dump(self) -> KernelRoutes:
        """flock's host routes in the main table, IPv4 and IPv6, next hops canonical:
        those of ``protocol`` (advertised) and of ``withdrawn_protocol``.

        A route of flock's protocols that flock would not have written (not a host
        route, no gateway, another metric, a nexthop object) is left out, with a
        warning the first time it is seen. A prefix with routes of both protocols (a
        crash between writes, or a hand edit) counts as advertised. Raises RouteError
        when the dump fails.
        """
        try:
            return await self._call(self._dump)
        except TimeoutError as exc:
            raise RouteError(f"dump routes proto {self.protocol}: no answer within "
                             f"{self.timeout} s") from exc

    def _dump(self) -> KernelRoutes:
        try:
            advertised, unlearnable = self._dump_routes(self.protocol)
            last_resort, unlearnable_last_resort = self._dump_routes(self.last_resort_protocol)
            withdrawn, _ = self._dump_routes(self.withdrawn_protocol)
            self._load_nexthops()
        except OSError as exc:
            reason = describe_errno(exc.errno) if exc.errno else str(exc)
            raise RouteError(f"dump routes proto {self.protocol}: {reason}", errno=exc.errno) from exc
        # (Loops over the smaller side: a set of 10,000 addresses costs ~1.5 ms to build.)
        for address in [address for address in last_resort if address in advertised]:
            del last_resort[address]
        unlearnable |= unlearnable_last_resort & last_resort.keys()
        for address in [address for address in withdrawn if address in advertised or address in last_resort]:
            del withdrawn[address]
        if unlearnable - self._unlearnable:
            log.warning("routes of flock's protocol that BIRD cannot learn (a next hop not onlink), "
                        "writing them again: %s proto=%d netns=%s",
                        ",".join(sorted(host_prefix(a) for a in unlearnable - self._unlearnable)),
                        self.protocol, self.netns or "-")
        self._unlearnable = unlearnable
        self._collect_garbage()
        routed = advertised | last_resort
        reshape = self._nh.misshapen(routed.keys(), self.mode)
        return KernelRoutes(routed, withdrawn, frozenset(unlearnable), frozenset(last_resort), frozenset(reshape))

    def _load_nexthops(self) -> None:
        """Rebuild the next-hop state from the kernel: its objects, and which of flock's
        routes point at which group (from the route dumps just made)."""
        if not self._nh_supported or self._dumper is None:
            return
        self._nh.load(self._dumper.nexthops())
        self._nh.bind({protocol: self._route_groups.get(protocol, {})
                       for protocol in (self.protocol, self.withdrawn_protocol, self.last_resort_protocol)})

    def _collect_garbage(self) -> None:
        """Delete flock's groups no route uses, then its members no group holds (absent
        already is fine). Failures are logged: the next dump tries again."""
        if not self._nh_supported or self._sock is None or not self._nh.bound:
            return
        garbage = self._nh.garbage()
        for pass_ in (True, False):  # groups first: a member still in a group would shrink it
            doomed = [nexthop_id for nexthop_id, group in garbage if group == pass_]
            if doomed and not pass_:  # a member of a group that could not be deleted stays
                held = {member for group in self._nh.groups.values() for member in group.members}
                doomed = [nexthop_id for nexthop_id in doomed if nexthop_id not in held]
            if not doomed:
                continue
            self.writes += len(doomed)
            answers = self._sock.transact([(RTM_DELNEXTHOP, 0, rtnl.nexthop_delete_request(nexthop_id))
                                           for nexthop_id in doomed], quiet=True)
            for nexthop_id, answer in zip(doomed, answers, strict=True):
                if answer in (0, errno.ENOENT, errno.ESRCH):
                    self._nh.forget(nexthop_id)
                else:
                    log.warning("could not delete an unused next-hop object of flock's id=%d error=%s netns=%s",
                                nexthop_id, describe_errno(answer) if answer else "no answer", self.netns or "-")

    def _dump_routes(self, protocol: int) -> tuple[dict[IPAddress, Nexthops], set[IPAddress]]:
        """``protocol``'s routes as flock's table, and those of them BIRD cannot learn."""
        if self._dumper is None:
            raise OSError(errno.EBADF, "netlink is closed")
        routes4, not_onlink4, groups4 = self._dumper.routes(socket.AF_INET, protocol)
        routes6, not_onlink6, groups6 = self._dumper.routes(socket.AF_INET6, protocol)
        self._route_groups[protocol] = groups4 | groups6
        names = self._nexthop_names.setdefault(protocol, rtnl.NexthopNames())
        table, problems = names.table(routes4 + routes6, self._ifname)
        ignored = {(protocol, problem) for problem in problems}
        for _, problem in sorted(ignored - self._ignored):
            log.warning("ignored a route of flock's protocol: %s proto=%d netns=%s",
                        problem, protocol, self.netns or "-")
        self._ignored = {known for known in self._ignored if known[0] != protocol} | ignored
        return table, (not_onlink4 | not_onlink6) & table.keys()

    # -- writing ------------------------------------------------------------------

    async def apply(self, edits: Sequence[RouteEdit]) -> list[RouteError]:
        """Apply ``edits`` in order; return one RouteError per edit that failed.

        The other edits are still applied. A delete of a route that is already gone
        succeeds. If the worker does not answer within ``timeout``, the edits not yet
        reported fail with "outcome unknown" (the worker is stuck).
        """
        errors: list[RouteError] = []
        position = 0
        while position < len(edits):
            try:
                results, position = await self._call(self._apply_some, edits, position)
            except TimeoutError:
                errors.extend(RouteError(f"{edit}: outcome unknown, no answer from netlink "
                                         f"within {self.timeout} s", edit=edit) for edit in edits[position:])
                break
            errors.extend(error for error in results if error is not None)
        return errors

    def _apply_some(self, edits: Sequence[RouteEdit],
                    start: int) -> tuple[list[RouteError | None], int]:
        """Apply edits from ``start`` for about _APPLY_SLICE seconds: (results, next start).

        Edits go in batches of _EDITS_PER_BATCH (see :meth:`_apply_batch`), and as many
        batches as fit in the slice per trip to the worker, so that the ``timeout`` keeps
        its meaning for a batch of any size.
        """
        deadline = time.monotonic() + _APPLY_SLICE
        if self._nh_supported and not self._nh.bound:
            # Which route uses which group is known only from a dump: never plan (or
            # collect garbage) without it, or a group in use would look unused.
            self._resync_nexthops()
        results: list[RouteError | None] = []
        position = start
        while position < len(edits):
            batch = edits[position:position + _EDITS_PER_BATCH]
            results.extend(self._apply_batch(batch))
            position += len(batch)
            if time.monotonic() >= deadline:
                break
        return results, position

    def _apply_batch(self, edits: Sequence[RouteEdit]) -> list[RouteError | None]:
        """Encode ``edits``, send them over the one socket and match each ack to its edit.

        An edit that cannot be encoded (unknown device, next hop of the other family, no
        next hops) fails on its own and is not sent. An edit may take several requests
        (next-hop members, its group, its route: in that order); its result is the first
        refusal. A replace the kernel refused is retried once, after the others, if one
        of its devices has a new ifindex since the batch was encoded (see
        :meth:`_retry_stale`). After any refusal the next-hop state is read again from the
        kernel; then the groups and members nothing uses any more are deleted.
        """
        results: list[RouteError | None] = [None] * len(edits)
        requests, sent = self._encode_each(edits, range(len(edits)), results)
        answers = self._transact(edits, sent, requests)
        stale: list[tuple[int, list[int]]] = []
        refused = False
        for position, indexes, answer in self._answers(sent, answers):
            edit = edits[position]
            results[position] = self._outcome(edit, answer)
            if results[position] is not None:
                refused = True
            if answer[0] and answer[0] != errno.EEXIST and not isinstance(edit, DeleteRoute):
                stale.append((position, indexes))
        if refused:
            self._resync_nexthops()
        if stale:
            self._retry_stale(edits, stale, results)
        if self._nh.groups or self._nh.members:
            self._collect_garbage()
        return results

    @staticmethod
    def _answers(sent: list[tuple[int, list[int], list[str]]], answers: list[int | OSError | None]
                 ) -> Iterator[tuple[int, list[int], tuple[int | OSError | None, str]]]:
        """Per edit sent: (position, ifindexes, (its first refusal or 0, what was refused))."""
        offset = 0
        for position, indexes, labels in sent:
            mine = answers[offset:offset + len(labels)]
            offset += len(labels)
            first: tuple[int | OSError | None, str] = (0, "")
            for answer, label in zip(mine, labels, strict=True):
                if answer != 0:
                    first = (answer, label)
                    break
            yield position, indexes, first

    def _resync_nexthops(self) -> None:
        """After a refusal: the next-hop state from the kernel again (objects and routes)."""
        if not self._nh_supported or self._dumper is None:
            return
        try:
            for protocol in (self.protocol, self.withdrawn_protocol, self.last_resort_protocol):
                groups: dict[IPAddress, int] = {}
                for family in (socket.AF_INET, socket.AF_INET6):
                    groups |= self._dumper.routes(family, protocol)[2]
                self._route_groups[protocol] = groups
            self._load_nexthops()
        except OSError as exc:
            log.warning("could not read next-hop objects after a refused edit error=%s netns=%s", exc,
                        self.netns or "-")

    def _retry_stale(self, edits: Sequence[RouteEdit], failed: list[tuple[int, list[int]]],
                     results: list[RouteError | None]) -> None:
        """Send the refused replaces in ``failed`` again whose devices changed ifindex.

        A veth recreated under the same name has a new index, and the kernel answers a
        stale one with ENETUNREACH (IPv4 checks the gateway through the old oif before
        looking the device up) or ENODEV. So after any refusal, look the names up again
        and retry once where an index changed, unless a later edit of the same batch
        decided the same prefix: retrying after it would undo the order of the edits.
        """
        try:
            self._refresh_links()
        except OSError as exc:  # the refusals stand
            log.warning("netlink link dump failed; refused edits not retried error=%s", exc)
            return
        last = {edit.address: position for position, edit in enumerate(edits)}
        again = [position for position, indexes in failed
                 if last[edits[position].address] == position
                 and [self._indexes.get(hop.dev)
                      for hop in cast(ReplaceRoute | WithdrawRoute, edits[position]).nexthops] != indexes]
        requests, sent = self._encode_each(edits, again, results)
        answers = self._transact(edits, sent, requests)
        refused = False
        for position, _, answer in self._answers(sent, answers):
            results[position] = self._outcome(edits[position], answer)
            refused = refused or results[position] is not None
        if refused:
            self._resync_nexthops()

    def _encode_each(self, edits: Sequence[RouteEdit], positions: Iterable[int], results: list[RouteError | None]
                     ) -> tuple[list[rtnl.Request], list[tuple[int, list[int], list[str]]]]:
        """The requests for the edits at ``positions``, and (position, ifindexes used, what
        each of its requests writes) for each edit sent; an edit that cannot be encoded
        gets its RouteError in ``results``."""
        requests: list[rtnl.Request] = []
        sent: list[tuple[int, list[int], list[str]]] = []
        for position in positions:
            encoded = self._encode(edits[position])
            if isinstance(encoded, RouteError):
                results[position] = encoded
                continue
            labelled, indexes = encoded
            requests.extend(request for request, _ in labelled)
            sent.append((position, indexes, [label for _, label in labelled]))
        return requests, sent

    def _encode(self, edit: RouteEdit) -> tuple[list[tuple[rtnl.Request, str]], list[int]] | RouteError:
        """The netlink requests for ``edit`` (with what each writes) and the ifindexes it
        uses, or why there are none."""
        if isinstance(edit, DeleteRoute):
            # proto: the kernel then never deletes another protocol's route
            protocol = self._protocol_of(edit)
            bound = self._nh.routes.get(edit.address)
            if bound is not None and bound[1] == protocol:
                self._nh.unbind(edit.address)  # its group goes after the route (_collect_garbage)
            return [((RTM_DELROUTE, 0, rtnl.route_delete_request(edit.address.packed, protocol)), "route")], []
        if not edit.nexthops:
            return RouteError(f"{edit}: no next hops (delete the route instead)", edit=edit)
        indexes = []
        hops = []
        for hop in edit.nexthops:
            try:
                index = self._ifindex(hop.dev)
            except OSError as exc:  # the link dump failed
                return RouteError(f"{edit}: {exc}", edit=edit, errno=exc.errno)
            if index is None:
                return RouteError(f"{edit}: {describe_errno(errno.ENODEV)}: {hop.dev}",
                                  edit=edit, errno=errno.ENODEV)
            if hop.via.version != edit.address.version:
                return RouteError(f"{edit}: next hop {hop.via} is not IPv{edit.address.version}", edit=edit)
            indexes.append(index)
            hops.append((hop.via.packed, index))
        if isinstance(edit, WithdrawRoute):
            # Replace only, never create: a route that is gone is withdrawn already. A route
            # through a group keeps it.
            retag = self._nh.retag(edit.address, self.withdrawn_protocol)
            if retag is not None:
                return [(retag, "route")], indexes
            request = rtnl.route_request(edit.address.packed, self.withdrawn_protocol, hops)
            return [((RTM_NEWROUTE, NLM_F_REPLACE, request), "route")], indexes
        protocol = self.last_resort_protocol if edit.last_resort else self.protocol
        if self.mode == RESILIENT:
            try:
                return self._nh.plan_replace(edit.address, hops, protocol, edit.new), indexes
            except OSError as exc:  # no free id
                return RouteError(f"{edit}: {exc}", edit=edit)
        # A prefix flock does not route yet is added create-exclusive: see the module docstring.
        flags = NLM_F_CREATE | (NLM_F_EXCL if edit.new else NLM_F_REPLACE)
        self._nh.unbind(edit.address)  # a plain route now: its group (if any) goes after it
        return [((RTM_NEWROUTE, flags, rtnl.route_request(edit.address.packed, protocol, hops)), "route")], indexes

    def _protocol_of(self, edit: DeleteRoute) -> int:
        if edit.withdrawn:
            return self.withdrawn_protocol
        return self.last_resort_protocol if edit.last_resort else self.protocol

    def _transact(self, edits: Sequence[RouteEdit], sent: list[tuple[int, list[int], list[str]]],
                  requests: list[rtnl.Request]) -> list[int | OSError | None]:
        """Send ``requests``: one errno (0 = done), None (no answer) or OSError (the socket
        failed) per request."""
        if not requests:
            return []
        self.writes += len(requests)
        try:
            if self._sock is None:
                raise OSError(errno.EBADF, "netlink is closed")
            return list(self._sock.transact(requests, quiet=True))
        except OSError as exc:
            log.error("netlink socket failed edits=%d first=%s error=%s", len(requests),
                      edits[sent[0][0]], exc)
            return [exc] * len(requests)

    def _outcome(self, edit: RouteEdit, refusal: tuple[int | OSError | None, str]) -> RouteError | None:
        """The RouteError for ``edit`` given the kernel's first refusal of its requests
        (and what that request wrote), None if it succeeded."""
        answer, what = refusal
        if answer == 0:
            return None
        if answer is None:
            return RouteError(f"{edit}: outcome unknown, no answer from netlink within {self.timeout} s",
                              edit=edit)
        if isinstance(answer, OSError):  # the socket itself failed (closed, ...)
            return RouteError(f"{edit}: {answer}", edit=edit, errno=answer.errno)
        if what != "route":
            return RouteError(f"{edit}: {what}: {describe_errno(answer)}", edit=edit, errno=answer)
        if isinstance(edit, DeleteRoute | WithdrawRoute):
            if answer in (errno.ESRCH, errno.ENOENT):
                return None  # already gone
            if isinstance(edit, DeleteRoute):
                return RouteError(f"{edit} proto {self._protocol_of(edit)}: {describe_errno(answer)}",
                                  edit=edit, errno=answer)
        if answer == errno.EEXIST:
            return RouteError(f"{edit}: a route for {host_prefix(edit.address)} that is not "
                              f"flock's (another rtm_protocol) already exists; flock leaves it alone",
                              edit=edit, errno=answer)
        return RouteError(f"{edit}: {describe_errno(answer)}", edit=edit, errno=answer)

    # -- sysctls ------------------------------------------------------------------

    async def set_multipath_hash_policy(self) -> list[str]:
        """Hash ECMP flows on their 5-tuple, for IPv4 and IPv6 (see
        :func:`flock.adapters.sysctl.set_multipath_hash_policy` for why).

        Works inside ``netns`` when one is set. Best effort: returns warnings, raises nothing.
        """
        if self._executor is None:
            raise RuntimeError(f"{self!r} is not started")
        # The worker thread is inside the netns (see _open), so its /proc/sys/net is.
        where = f" (netns {self.netns})" if self.netns else ""
        warnings = await self._call(sysctl.set_multipath_hash_policy, self.proc)
        return [warning + where for warning in warnings]
