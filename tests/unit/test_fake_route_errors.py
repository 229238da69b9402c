"""FakeRoutes fails like NetlinkRoutes: its RouteErrors carry the edit and, when the
"kernel" answers with one, the errno."""

from __future__ import annotations

import errno
import ipaddress

from flock.core.model import Nexthop
from flock.core.routediff import ReplaceRoute
from flock.testing import FakeRoutes

A = ipaddress.ip_address
HOP = Nexthop(A("192.0.2.11"), "flock0000000a")


async def test_a_fake_failure_given_as_an_errno_reads_like_the_kernels() -> None:
    fake = FakeRoutes(fail={A("198.51.100.11"): errno.ENETUNREACH})
    edit = ReplaceRoute(A("198.51.100.11"), (HOP,))
    (error,) = await fake.apply([edit])
    assert str(error) == "replace 198.51.100.11/32 via 192.0.2.11 dev flock0000000a: " \
                         "Network is unreachable (netlink 101)"
    assert (error.edit, error.errno) == (edit, errno.ENETUNREACH)


async def test_a_fake_failure_given_as_a_reason_carries_its_edit_and_no_errno() -> None:
    fake = FakeRoutes(fail={A("198.51.100.11"): "refused"})
    edit = ReplaceRoute(A("198.51.100.11"), (HOP,))
    empty = ReplaceRoute(A("198.51.100.12"), ())
    errors = await fake.apply([edit, empty])
    assert [(error.edit, error.errno) for error in errors] == [(edit, None), (empty, None)]
    assert errors[0].key == (str(edit), None)
