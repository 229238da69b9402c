"""A small BGP lab for tests: BIRD daemons in ``flk-*`` namespaces, ToR configs, links.

Everything here runs inside network namespaces the caller made (``make_netns``); nothing
touches the root namespace. Every BIRD started here is stopped by its own PID.

Usage in a test module::

    @pytest.fixture
    def birds() -> Iterator[birdlab.Birds]:
        with birdlab.Birds() as started:
            yield started          # every BIRD started through it is stopped at teardown

    def test_x(make_netns, birds):
        tor, node = make_netns("tor"), make_netns("node")
        wire = birdlab.link(tor, node, 0)           # tor 192.0.2.1 <-> node 192.0.2.2
        bird = birds.start(tor, birdlab.tor_config(router_id=wire.a_v4.ip, asn=65000,
                                                   neighbors=[(wire.b_v4.ip, 65101)]))
        bird.birdc("show", "protocols")

Link addressing (documentation ranges only), link number k = 0..31, side a (the ToR)
and side b (the node), interface ``fl<k>`` on both sides:

    IPv4  192.0.2.<4k>/30          a = 192.0.2.<4k+1>    b = 192.0.2.<4k+2>
    IPv6  2001:db8:ffff:<k>::/64   a = 2001:db8:ffff:<k>::1   b = ...::2

so link 0 is 192.0.2.1 <-> 192.0.2.2 and 2001:db8:ffff::1 <-> 2001:db8:ffff::2. The rest
of 192.0.2.0/24 (from .128) and the other documentation ranges are left for anycast
pools (198.51.100.0/24, 2001:db8:100::/48 in the tests) and pod CIDRs (203.0.113.0/24,
2001:db8:200::/48).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from flock.lab.topology import tor_bird_config
from tests.support.netns import sh

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_LINKS = 32


# ---------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str,
             interval: float = 0.2) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# BIRD daemons
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class RunningBird:
    """A BIRD daemon running in the foreground (``bird -f``) inside ``netns``."""

    netns: str
    pid: int
    directory: pathlib.Path
    """Holds bird.conf, the control socket, the pid file and bird.log (BIRD's stderr)."""
    process: subprocess.Popen[bytes]

    @property
    def config_path(self) -> pathlib.Path:
        return self.directory / "bird.conf"

    @property
    def socket(self) -> pathlib.Path:
        return self.directory / "bird.ctl"

    @property
    def log_path(self) -> pathlib.Path:
        return self.directory / "bird.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def birdc(self, *args: str, timeout: float = 10) -> str:
        """Run ``birdc -s SOCKET ARGS...`` (no -v) and return its output.

        birdc talks over the unix socket, so no ``ip netns exec`` is needed.
        """
        done = subprocess.run(["birdc", "-s", str(self.socket), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM by PID, then SIGKILL if BIRD has not exited within ``timeout`` s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout)


def start_bird(netns: str, config_text: str, directory: pathlib.Path, *,
               ready_timeout: float = 15) -> RunningBird:
    """Write ``config_text`` to ``directory/bird.conf`` and run BIRD on it inside ``netns``.

    Returns once BIRD answers on its control socket; raises RuntimeError with BIRD's log
    if it exits or does not answer within ``ready_timeout`` s (it is stopped then).
    ``directory`` should be short: a unix socket path is limited to 107 bytes.
    """
    config_path, socket = directory / "bird.conf", directory / "bird.ctl"
    config_path.write_text(config_text)
    with (directory / "bird.log").open("wb") as log:
        # `ip netns exec` enters the namespace and execs bird: the PID is BIRD's own.
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, "bird", "-f", "-c", str(config_path),
             "-s", str(socket), "-P", str(directory / "bird.pid")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    bird = RunningBird(netns=netns, pid=process.pid, directory=directory, process=process)

    def ready() -> bool:
        if not bird.running():
            raise RuntimeError(f"BIRD in {netns} exited ({bird.process.returncode}):\n{bird.log()}")
        return bird.socket.exists() and "Daemon is up and running" in bird.birdc("show", "status")

    try:
        wait_for(ready, timeout=ready_timeout, what=f"BIRD in {netns} to answer")
    except AssertionError as exc:
        bird.stop()
        raise RuntimeError(f"{exc}\n{bird.log()}") from exc
    return bird


class Birds:
    """Starts BIRDs and stops every one of them (by PID) when the ``with`` block ends."""

    def __init__(self) -> None:
        self.started: list[RunningBird] = []
        self._directories: list[pathlib.Path] = []

    def directory(self, role: str = "bird") -> pathlib.Path:
        """A fresh short directory under /tmp, removed at teardown."""
        path = pathlib.Path(tempfile.mkdtemp(prefix=f"flk-{role}-", dir="/tmp"))
        self._directories.append(path)
        return path

    def start(self, netns: str, config_text: str, *, directory: pathlib.Path | None = None,
              ready_timeout: float = 15) -> RunningBird:
        """:func:`start_bird` in a fresh directory (or ``directory``), stopped at teardown."""
        where = directory or self.directory(netns.removeprefix("flk-").split("-")[0])
        bird = start_bird(netns, config_text, where, ready_timeout=ready_timeout)
        self.started.append(bird)
        return bird

    def stop_all(self) -> None:
        for bird in reversed(self.started):
            bird.stop()
        self.started.clear()
        for path in self._directories:
            shutil.rmtree(path, ignore_errors=True)
        self._directories.clear()

    def __enter__(self) -> Birds:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


# ---------------------------------------------------------------------------
# Top-of-rack router
# ---------------------------------------------------------------------------


def tor_config(*, router_id: IPAddress | str, asn: int,
               neighbors: Iterable[tuple[IPAddress, int]]) -> str:
    """bird.conf of a top-of-rack router: the lab's (flock.lab.topology), so the tests and
    the lab run the same ToR. It accepts everything its nodes announce, announces nothing
    back, and writes its best routes to its kernel with ``merge paths on`` (ECMP)."""
    return tor_bird_config(str(router_id), [(str(address), peer_asn) for address, peer_asn in neighbors], asn)


# ---------------------------------------------------------------------------
# Links and routes
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Link:
    """A veth pair between two namespaces, both ends named ``ifname``."""

    a: str
    b: str
    ifname: str
    a_v4: ipaddress.IPv4Interface
    b_v4: ipaddress.IPv4Interface
    a_v6: ipaddress.IPv6Interface
    b_v6: ipaddress.IPv6Interface


def link_addresses(index: int) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Interface,
                                        ipaddress.IPv6Interface, ipaddress.IPv6Interface]:
    """(a_v4, b_v4, a_v6, b_v6) of link ``index`` (see the module docstring)."""
    if not 0 <= index < MAX_LINKS:
        raise ValueError(f"link index {index} outside 0-{MAX_LINKS - 1}")
    v4 = ipaddress.IPv4Network(f"192.0.2.{4 * index}/30")
    v6 = ipaddress.IPv6Network(f"2001:db8:ffff:{index:x}::/64")
    return (ipaddress.IPv4Interface(f"{v4[1]}/30"), ipaddress.IPv4Interface(f"{v4[2]}/30"),
            ipaddress.IPv6Interface(f"{v6[1]}/64"), ipaddress.IPv6Interface(f"{v6[2]}/64"))


def link(a: str, b: str, index: int) -> Link:
    """Connect namespaces ``a`` and ``b`` with veth ``fl<index>`` and link ``index``'s addresses.

    The pair is created inside ``a`` with its peer moved straight into ``b``: it never
    exists in the root namespace. IPv6 addresses skip DAD so BGP can bind at once.
    """
    a_v4, b_v4, a_v6, b_v6 = link_addresses(index)
    ifname = f"fl{index}"
    sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", b, netns=a)
    for netns, v4, v6 in ((a, a_v4, a_v6), (b, b_v4, b_v6)):
        sh("ip", "addr", "add", str(v4), "dev", ifname, netns=netns)
        sh("ip", "-6", "addr", "add", str(v6), "dev", ifname, "nodad", netns=netns)
        sh("ip", "link", "set", ifname, "up", netns=netns)
    return Link(a, b, ifname, a_v4, b_v4, a_v6, b_v6)


def kernel_prefixes(netns: str, *, proto: str | None = None) -> set[str]:
    """Destination prefixes of the main table, both families: {"198.51.100.10/32", ...}.

    ``proto`` limits the dump to one route protocol (``bird``, ``201`` ...).
    """
    found: set[str] = set()
    for family in ("-4", "-6"):
        args = ["ip", family, "-j", "route", "show"] + (["proto", proto] if proto else [])
        for route in json.loads(sh(*args, netns=netns) or "[]"):
            dst = route.get("dst", "")
            if dst and dst != "default":
                found.add(str(ipaddress.ip_network(dst, strict=False)))
    return found


def has_all(netns: str, prefixes: Sequence[str], *, proto: str | None = None) -> bool:
    return set(prefixes) <= kernel_prefixes(netns, proto=proto)


def has_none(netns: str, prefixes: Sequence[str], *, proto: str | None = None) -> bool:
    return not set(prefixes) & kernel_prefixes(netns, proto=proto)
