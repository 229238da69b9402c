"""Each port's contract, run against the in-memory fake and the real adapter alike.

The unit tests trust flock.testing's fakes; these tests are why they may: the same
checks pass against FakeRoutes and NetlinkRoutes (a real kernel, in a netns), against
FakeBird and BirdControl (a real BIRD), and against RecordingEvents and EventPoster. A
fake that drifts from the real thing fails here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest

from flock.adapters.bird import BirdControl
from flock.adapters.kube import EventPoster, KubeApi
from flock.adapters.netlink import NetlinkRoutes
from flock.core.model import Event, IPAddress, Nexthop, ObjectRef, sorted_nexthops
from flock.core.ports import Bird, EventSink, Routes
from flock.core.routediff import DeleteRoute, KernelRoutes, ReplaceRoute, WithdrawRoute
from flock.errors import BirdConfigRejected, BirdUnavailable
from flock.metrics import Metrics
from flock.testing import FakeBird, FakeRoutes, RecordingEvents
from tests.support import birdlab
from tests.support.netns import plumb_pod

A4 = ipaddress.ip_address("198.51.100.70")
A6 = ipaddress.ip_address("2001:db8:100::70")


@dataclasses.dataclass
class RoutesUnderTest:
    routes: Routes
    hops: dict[int, list[Nexthop]]  # per IP family: the next hops of two pods


@pytest.fixture(params=["fake", pytest.param("netlink", marks=pytest.mark.netns),
                        pytest.param("netlink-resilient", marks=pytest.mark.netns)])
async def routes(request: pytest.FixtureRequest, make_netns: Callable[[str], str]) -> AsyncIterator[RoutesUnderTest]:
    pods = [("192.0.2.71", "2001:db8::71"), ("192.0.2.72", "2001:db8::72")]
    if request.param == "fake":
        hops = {4: [Nexthop(ipaddress.ip_address(v4), f"flock0000000{n}") for n, (v4, _) in enumerate(pods)],
                6: [Nexthop(ipaddress.ip_address(v6), f"flock0000000{n}") for n, (_, v6) in enumerate(pods)]}
        yield RoutesUnderTest(FakeRoutes(), hops)
        return
    node = make_netns("node")
    plumbed = [plumb_pod(node, make_netns("pod"), f"contract-{n}", ips=list(ips), anycast=[str(A4), str(A6)])
               for n, ips in enumerate(pods)]
    hops = {version: [Nexthop(next(ip for ip in pod.ips if ip.version == version), pod.host_ifname)
                      for pod in plumbed] for version in (4, 6)}
    mode = "resilient" if request.param == "netlink-resilient" else "multipath"
    real = NetlinkRoutes(protocol=201, withdrawn_protocol=202, last_resort_protocol=203, netns=node, timeout=30,
                         nexthop_groups=mode)
    await real.start()
    assert real.mode == mode, real.fallback
    try:
        yield RoutesUnderTest(real, hops)
    finally:
        await real.close()


@pytest.mark.parametrize("address", [A4, A6], ids=["ipv4", "ipv6"])
async def test_routes_replace_dump_and_delete_like_the_kernel(routes: RoutesUnderTest, address: IPAddress) -> None:
    port, hops = routes.routes, routes.hops[address.version]
    assert await port.dump() == KernelRoutes()
    assert await port.apply([ReplaceRoute(address, tuple(hops), new=True)]) == []
    assert await port.dump() == KernelRoutes({address: sorted_nexthops(hops)}), "next hops come back sorted"
    assert await port.apply([ReplaceRoute(address, (hops[1],))]) == []
    assert await port.dump() == KernelRoutes({address: (hops[1],)}), "multipath to one next hop in place"
    assert await port.apply([DeleteRoute(address)]) == []
    assert await port.dump() == KernelRoutes()
    assert await port.apply([DeleteRoute(address)]) == [], "deleting a route that is gone is success"


@pytest.mark.parametrize("address", [A4, A6], ids=["ipv4", "ipv6"])
async def test_routes_withdraw_by_re_tagging_and_come_back(routes: RoutesUnderTest, address: IPAddress) -> None:
    port, hops = routes.routes, sorted_nexthops(routes.hops[address.version])
    assert await port.apply([ReplaceRoute(address, hops, new=True)]) == []
    assert await port.apply([WithdrawRoute(address, hops)]) == []
    assert await port.dump() == KernelRoutes({}, {address: hops}), "still forwarding, as withdrawn"
    assert await port.apply([DeleteRoute(address)]) == [], "the advertised one is gone already"
    assert await port.dump() == KernelRoutes({}, {address: hops}), "a delete never takes the other kind"
    assert await port.apply([ReplaceRoute(address, hops[:1])]) == []
    assert await port.dump() == KernelRoutes({address: hops[:1]}), "advertised again, in place"
    assert await port.apply([WithdrawRoute(address, hops[:1]), DeleteRoute(address, withdrawn=True)]) == []
    assert await port.dump() == KernelRoutes()
    assert await port.apply([WithdrawRoute(address, hops[:1])]) == [], "withdrawing a route that is gone is success"
    assert await port.dump() == KernelRoutes(), "and creates nothing"


async def test_routes_report_a_bad_edit_with_its_data_and_apply_the_others(routes: RoutesUnderTest) -> None:
    port, hops = routes.routes, routes.hops
    bad = ReplaceRoute(A4, ())
    errors = await port.apply([bad, ReplaceRoute(A6, tuple(hops[6]))])
    assert len(errors) == 1 and errors[0].edit == bad and "no next hops" in str(errors[0])
    assert await port.dump() == KernelRoutes({A6: sorted_nexthops(hops[6])})


@dataclasses.dataclass
class BirdUnderTest:
    bird: Bird
    config: Callable[[int], str]  # a valid config, different for each number
    rejectable: Callable[[], str]  # a config BIRD refuses (the fake: told to refuse the next ones)
    accept_again: Callable[[], None]
    go_away: Callable[[], None]  # BIRD's control socket stops answering
    come_back: Callable[[], None]


@pytest.fixture(params=["fake", pytest.param("bird", marks=[pytest.mark.netns, pytest.mark.bird])])
def bird(request: pytest.FixtureRequest, make_netns: Callable[[str], str], birds: birdlab.Birds) -> BirdUnderTest:
    def config(n: int) -> str:
        return f"# config {n}\nrouter id 192.0.2.2;\nprotocol device {{}}\n"

    if request.param == "fake":
        fake = FakeBird()

        def rejectable() -> str:
            fake.reject = "syntax error, unexpected CF_SYM_UNDEFINED"
            return "protocol nonsense {}\n"

        def accept_again() -> None:
            fake.reject = None

        def go_away() -> None:
            fake.unavailable = True

        def come_back() -> None:
            fake.unavailable = False

        return BirdUnderTest(fake, config, rejectable, accept_again, go_away, come_back)

    netns = make_netns("node")
    running = [birds.start(netns, config(0), directory=birds.directory("node"))]
    real = BirdControl(config_path=running[0].config_path, socket=running[0].socket, timeout=5)

    def come_back_real() -> None:
        running[0] = birds.start(netns, running[0].config_path.read_text(), directory=running[0].directory)

    return BirdUnderTest(real, config, lambda: "protocol nonsense {}\n", lambda: None,
                         lambda: running[0].stop(), come_back_real)


async def test_bird_reconfigures_once_per_new_text(bird: BirdUnderTest) -> None:
    assert await bird.bird.apply(bird.config(1)) is True
    assert await bird.bird.apply(bird.config(1)) is False, "the running text again: nothing to do"
    assert await bird.bird.apply(bird.config(2)) is True


async def test_bird_refuses_a_bad_config_and_keeps_the_last_good_one(bird: BirdUnderTest) -> None:
    assert await bird.bird.apply(bird.config(1)) is True
    with pytest.raises(BirdConfigRejected):
        await bird.bird.apply(bird.rejectable())
    bird.accept_again()
    assert await bird.bird.apply(bird.config(1)) is False, "the good config stayed live"


async def test_bird_away_raises_unavailable_and_the_same_text_is_applied_once_it_is_back(
    bird: BirdUnderTest,
) -> None:
    assert await bird.bird.apply(bird.config(1)) is True
    bird.go_away()
    with pytest.raises(BirdUnavailable):
        await bird.bird.apply(bird.config(2))
    bird.come_back()
    assert await bird.bird.apply(bird.config(2)) is True, "not confirmed before: configured now"
    assert await bird.bird.apply(bird.config(2)) is False


@pytest.fixture(params=["fake", "poster"])
def event_sink(request: pytest.FixtureRequest) -> EventSink:
    if request.param == "fake":
        return RecordingEvents()
    # The real sink queues and posts from its own task; post() itself never touches the API.
    return EventPoster(cast(KubeApi, None), Metrics())


def test_an_event_sink_takes_any_number_of_events_at_once_without_raising(event_sink: EventSink) -> None:
    # The reconciler posts from inside a pass: post() must neither block nor raise.
    pod = ObjectRef(kind="Pod", name="web-1", namespace="default")
    started = time.monotonic()
    for n in range(20_000):
        event_sink.post(Event(pod, "Normal", "AnycastAdvertised", f"event {n}"))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("address", [A4, A6], ids=["ipv4", "ipv6"])
async def test_routes_tag_last_resort_routes_and_delete_each_kind_only(routes: RoutesUnderTest,
                                                                       address: IPAddress) -> None:
    port, hops = routes.routes, sorted_nexthops(routes.hops[address.version])
    assert await port.apply([ReplaceRoute(address, hops, new=True, last_resort=True)]) == []
    assert await port.dump() == KernelRoutes({address: hops}, last_resort=frozenset({address}))
    assert await port.apply([DeleteRoute(address)]) == [], "an ordinary route's delete: already gone"
    assert await port.dump() == KernelRoutes({address: hops}, last_resort=frozenset({address}))
    assert await port.apply([ReplaceRoute(address, hops)]) == []
    assert await port.dump() == KernelRoutes({address: hops}), "an ordinary route again, in place"
    assert await port.apply([ReplaceRoute(address, hops[:1], last_resort=True)]) == []
    assert await port.apply([DeleteRoute(address, last_resort=True)]) == []
    assert await port.dump() == KernelRoutes()
