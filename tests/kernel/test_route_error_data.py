"""A RouteError from the kernel adapter carries its edit and the kernel's errno, so the
reconciler recognises a repeated failure by (edit, errno) rather than by its message."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable

import pytest

from flock.adapters.netlink import NetlinkRoutes
from flock.core.model import Nexthop
from flock.core.routediff import DeleteRoute, ReplaceRoute, RouteEdit
from tests.support.netns import plumb_pod, sh

PROTO = 201
A = ipaddress.ip_address


@pytest.mark.netns
async def test_failed_edits_carry_their_edit_and_the_kernels_errno(make_netns: Callable[[str], str]) -> None:
    node = make_netns("node")
    pod = plumb_pod(node, make_netns("pod"), "route-error-data", ips=["192.0.2.21"], anycast=[])
    sh("ip", "-n", node, "route", "add", "198.51.100.13/32", "via", "192.0.2.21", "dev", pod.host_ifname,
       "proto", "static")
    sh("ip", "-n", node, "addr", "add", "203.0.113.99/32", "dev", "lo")  # a local address: no gateway
    edits: list[RouteEdit] = [
        ReplaceRoute(A("198.51.100.11"), (Nexthop(A("192.0.2.11"), "flockdeadbeef"),)),
        ReplaceRoute(A("198.51.100.12"), (Nexthop(A("203.0.113.99"), pod.host_ifname),)),
        ReplaceRoute(A("198.51.100.13"), (Nexthop(A("192.0.2.21"), pod.host_ifname),), new=True),
        DeleteRoute(A("198.51.100.14")),  # already gone: no error
    ]
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=202, last_resort_protocol=203, netns=node, timeout=30)
    await routes.start()
    try:
        errors = await routes.apply(edits)
    finally:
        await routes.close()

    assert [(error.edit, error.errno) for error in errors] == [
        (edits[0], errno.ENODEV), (edits[1], errno.EINVAL), (edits[2], errno.EEXIST)]
    assert [error.key for error in errors] == [
        (str(edits[0]), errno.ENODEV), (str(edits[1]), errno.EINVAL), (str(edits[2]), errno.EEXIST)]
