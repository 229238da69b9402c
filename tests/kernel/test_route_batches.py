"""NetlinkRoutes writes its edits in batches over one socket (flock.adapters.rtnetlink's
RtnlSocket.transact): each ack is matched back to its edit, whatever the batch's size,
wherever a failure falls in it, and in the order the edits were given.

A node namespace wired to two pod namespaces; routes are checked with ``ip -j``.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from flock.adapters import netlink
from flock.adapters import rtnetlink as rtnl
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.netns import named as named_netns
from flock.adapters.plumbing import in_netns
from flock.core.model import IPAddress, Nexthop, Nexthops
from flock.core.routediff import DeleteRoute, ReplaceRoute, RouteEdit
from tests.support.netns import PlumbedPod, plumb_pod, sh

PROTO = 201
A = ipaddress.ip_address
V6_POOL = int(A("2001:db8:100::"))


@dataclasses.dataclass
class Lab:
    node: str
    pods: list[PlumbedPod]
    routes: NetlinkRoutes

    def hop(self, pod: int, version: int = 6) -> Nexthop:
        via = next(ip for ip in self.pods[pod].ips if ip.version == version)
        return Nexthop(via, self.pods[pod].host_ifname)

    def both(self, version: int = 6) -> Nexthops:
        return tuple(sorted((self.hop(0, version), self.hop(1, version)), key=lambda hop: hop.via))

    def shown(self, version: int = 6) -> dict[str, int]:
        """prefix -> number of next hops of every route of flock's protocol, per ``ip -j``."""
        out = sh("ip", "-n", self.node, f"-{version}", "-j", "route", "show", "proto", str(PROTO))
        return {route["dst"]: len(route.get("nexthops", [route])) for route in json.loads(out or "[]")}


@pytest.fixture
async def lab(make_netns: Callable[[str], str]) -> AsyncIterator[Lab]:
    node = make_netns("node")
    pods = [plumb_pod(node, make_netns("pod"), f"route-batches-{n}",
                      ips=[f"192.0.2.3{n}", f"2001:db8::3{n}"], anycast=[]) for n in range(2)]
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=node, timeout=30)
    await routes.start()
    try:
        yield Lab(node, pods, routes)
    finally:
        await routes.close()


def v6(n: int) -> IPAddress:
    return ipaddress.IPv6Address(V6_POOL + n)


@pytest.mark.netns
async def test_a_batch_larger_than_one_send_matches_every_ack_to_its_edit(lab: Lab) -> None:
    size = 2 * rtnl._REQUESTS_PER_SEND + 500  # three sends per batch, three batches
    assert size > 2 * netlink._EDITS_PER_BATCH
    edits: list[RouteEdit] = [ReplaceRoute(v6(n), lab.both() if n % 2 else (lab.hop(n % 2),), new=True)
                              for n in range(size)]
    # Kernel refusals in the first, a middle and the last send: a gateway that is a local
    # address (flock's next hops are onlink, so that is what the kernel refuses), one per place.
    sh("ip", "-n", lab.node, "-6", "addr", "add", "2001:db8:ffff::1/128", "dev", "lo", "nodad")
    unreachable = (Nexthop(A("2001:db8:ffff::1"), lab.hop(0).dev),)
    failing = [3, rtnl._REQUESTS_PER_SEND + 7, size - 1]
    for n in failing:
        edits[n] = ReplaceRoute(v6(n), unreachable, new=True)
    before = lab.routes.writes

    errors = await lab.routes.apply(edits)

    assert [(error.edit, error.errno) for error in errors] == [(edits[n], errno.EINVAL) for n in failing]
    assert lab.routes.writes == before + size
    shown = lab.shown()
    assert len(shown) == size - len(failing)
    assert shown[f"{v6(1)}"] == 2 and shown[f"{v6(2)}"] == 1
    assert (await lab.routes.dump()).advertised == {edit.address: edit.nexthops for n, edit in enumerate(edits)
                                       if isinstance(edit, ReplaceRoute) and n not in failing}


@pytest.mark.netns
async def test_a_failure_in_the_middle_of_a_batch_stops_nothing_and_order_holds(lab: Lab) -> None:
    foreign = A("198.51.100.40")
    sh("ip", "-n", lab.node, "route", "add", f"{foreign}/32", "via", "192.0.2.30", "dev", lab.hop(0).dev,
       "proto", "static")
    first, second = A("198.51.100.41"), A("198.51.100.42")
    edits: list[RouteEdit] = [
        ReplaceRoute(first, (lab.hop(0, 4),), new=True),
        DeleteRoute(first),  # after its add: gone at the end
        ReplaceRoute(foreign, (lab.hop(1, 4),), new=True),  # EEXIST: not flock's
        DeleteRoute(second),  # before its add: absent yet, which is success
        ReplaceRoute(second, (lab.hop(0, 4),), new=True),
        ReplaceRoute(second, lab.both(4)),  # then widened: the last edit wins
        DeleteRoute(foreign),  # another protocol's: ESRCH, success, left alone
    ]

    errors = await lab.routes.apply(edits)

    assert [(error.edit, error.errno) for error in errors] == [(edits[2], errno.EEXIST)]
    assert lab.shown(4) == {str(second): 2}
    assert "proto static" in sh("ip", "-n", lab.node, "route", "show", f"{foreign}/32")


@pytest.mark.netns
async def test_a_stale_ifindex_is_not_retried_past_a_later_edit_of_the_same_prefix(lab: Lab) -> None:
    address, other = A("198.51.100.43"), A("198.51.100.44")
    pod = lab.pods[0]
    errors = await lab.routes.apply([ReplaceRoute(other, (lab.hop(0, 4),), new=True)])  # caches the index
    assert errors == []
    sh("ip", "-n", lab.node, "link", "delete", pod.host_ifname)
    plumb_pod(lab.node, pod.netns, pod.container_id, ips=[str(ip) for ip in pod.ips], anycast=[])

    errors = await lab.routes.apply([ReplaceRoute(address, (lab.hop(0, 4),), new=True), DeleteRoute(address),
                                     ReplaceRoute(other, (lab.hop(0, 4),), new=True)])

    # The add failed on the old index and the delete after it succeeded: retrying the
    # add now would leave a route the edits said to remove. The lone add is retried.
    assert [error.edit for error in errors] == [ReplaceRoute(address, (lab.hop(0, 4),), new=True)]
    assert lab.shown(4) == {str(other): 1}


@pytest.mark.netns
async def test_acks_the_kernel_dropped_are_unknown_not_success_and_cost_no_wait(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # A receive queue too small for a send's acks: the kernel drops most of them (ENOBUFS).
    monkeypatch.setattr(rtnl, "_ACK_QUEUE", 4096)
    [shown] = json.loads(sh("ip", "-n", lab.node, "-j", "link", "show", "dev", lab.hop(0).dev))
    requests: list[rtnl.Request] = [
        (rtnl.RTM_NEWROUTE, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
         rtnl.route_request(v6(n).packed, PROTO, [(lab.hop(0).via.packed, shown["ifindex"])]))
        for n in range(rtnl._REQUESTS_PER_SEND + 1)]

    def send() -> list[int | None]:
        with rtnl.RtnlSocket(timeout=30) as sock:
            return sock.transact(requests)

    answers = await in_netns(named_netns(lab.node), 10, send)  # well under the socket's 30 s

    assert None in answers, "some acks were dropped"
    assert {answer for answer in answers if answer is not None} == {0}
    assert answers[-1] is not None, "the next send is answered again"


def _creates(lab: Lab, numbers: range | list[int]) -> list[rtnl.Request]:
    [shown] = json.loads(sh("ip", "-n", lab.node, "-j", "link", "show", "dev", lab.hop(0).dev))
    return [(rtnl.RTM_NEWROUTE, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
             rtnl.route_request(v6(n).packed, PROTO, [(lab.hop(0).via.packed, shown["ifindex"])]))
            for n in numbers]


@pytest.mark.netns
async def test_a_quiet_batch_answers_each_request_as_an_acked_one(lab: Lab) -> None:
    size = rtnl._REQUESTS_PER_SEND + 300  # two sends
    present = [n for n in range(size) if n % 3 == 0]

    def send() -> tuple[list[int | None], list[int | None]]:
        with rtnl.RtnlSocket(timeout=30) as sock:
            return sock.transact(_creates(lab, present)), sock.transact(_creates(lab, range(size)), quiet=True)

    acked, quiet = await in_netns(named_netns(lab.node), 10, send)

    assert acked == [0] * len(present)
    assert quiet == [errno.EEXIST if n % 3 == 0 else 0 for n in range(size)], "refusals where they are, in order"
    assert len(lab.shown()) == size


@pytest.mark.netns
async def test_a_quiet_send_across_the_sequence_numbers_wrap_waits_for_its_last_request(lab: Lab) -> None:
    def send() -> list[int | None]:
        with rtnl.RtnlSocket(timeout=5) as sock:
            sock._seq = 0xFFFFFFFF - 2  # the send's numbers run ..., 0xFFFFFFFF, 1, 2
            return sock.transact(_creates(lab, range(5)), quiet=True)

    assert await in_netns(named_netns(lab.node), 4, send) == [0] * 5
    assert len(lab.shown()) == 5


@pytest.mark.netns
async def test_a_quiet_batch_whose_refusals_were_dropped_claims_no_success(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtnl, "_ACK_QUEUE", 4096)  # too small for a send's refusals: ENOBUFS
    size = rtnl._REQUESTS_PER_SEND + 1

    def send() -> tuple[list[int | None], list[int | None]]:
        with rtnl.RtnlSocket(timeout=30) as sock:
            sock.transact(_creates(lab, range(size)), quiet=True)
            return sock.transact(_creates(lab, range(size)), quiet=True), sock.transact(_creates(lab, [size]),
                                                                                         quiet=True)

    refused, after = await in_netns(named_netns(lab.node), 10, send)  # well under the socket's 30 s

    assert None in refused, "some refusals were dropped"
    assert {answer for answer in refused if answer is not None} == {errno.EEXIST}, "never 0: all were refused"
    assert after == [0], "the next send is answered again"


def test_route_requests_decode_as_the_routes_they_describe() -> None:
    gateway_a = A("2001:db8::31").packed
    plain = rtnl.route_request(v6(1).packed, PROTO, [(gateway_a, 7)])
    family, dst_len, src_len, table, protocol, kind, _flags, attrs = rtnl.route(plain, 0, len(plain))
    assert (family, dst_len, src_len, table, protocol, kind) == (socket.AF_INET6, 128, 0, 254, PROTO, 1)
    assert plain[slice(*attrs[rtnl.RTA_DST])] == v6(1).packed
    assert plain[slice(*attrs[rtnl.RTA_GATEWAY])] == gateway_a and rtnl.u32(plain, attrs[rtnl.RTA_OIF]) == 7
    assert rtnl.RTA_PRIORITY not in attrs, "no metric: the kernel's default"

    multi = rtnl.route_request(A("198.51.100.1").packed, PROTO, [(A("192.0.2.31").packed, 7),
                                                                  (A("192.0.2.32").packed, 8)])
    family, dst_len, *_, attrs = rtnl.route(multi, 0, len(multi))
    assert (family, dst_len) == (socket.AF_INET, 32) and rtnl.RTA_GATEWAY not in attrs
    hops = [(index, multi[slice(*hop[rtnl.RTA_GATEWAY])])
            for index, hop in rtnl.nexthops(multi, attrs[rtnl.RTA_MULTIPATH])]
    assert hops == [(7, A("192.0.2.31").packed), (8, A("192.0.2.32").packed)]

    gone = rtnl.route_delete_request(v6(1).packed, PROTO)
    family, dst_len, _, _, protocol, kind, _, attrs = rtnl.route(gone, 0, len(gone))
    assert (family, dst_len, protocol, kind) == (socket.AF_INET6, 128, PROTO, 0) and list(attrs) == [rtnl.RTA_DST]
