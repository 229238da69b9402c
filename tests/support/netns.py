"""Network namespaces for tests: ``flk-<random>`` names, documentation addresses only.

Every namespace made here is deleted by its owner at teardown (also on failure);
nothing here ever touches the root network namespace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import itertools
import os
import re
import secrets
import subprocess
from collections.abc import Sequence

PREFIX = "flk-"


def sh(*args: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (inside ``netns`` when given) and return its stdout."""
    cmd = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


_serial = itertools.count()


def new_name(role: str) -> str:
    # The creating process's pid is part of the name, so a test session only ever
    # clears namespaces whose creator is gone (several sessions may run at once).
    # A per-process serial (everything before the last 4 hex digits) makes names unique
    # within the process by construction: 16 random bits alone collided in CI, with a
    # hundred pods in one test. The random part keeps a reused pid from meeting a
    # leftover namespace of a dead creator.
    return f"{PREFIX}{role}-{os.getpid()}-{next(_serial)}{secrets.token_hex(2)}"


def create(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "link", "set", "lo", "up", netns=name)
    return name


def delete(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def stale() -> list[str]:
    """``flk-<role>-<pid>-<hex>`` namespaces whose creating test process no longer exists.

    Only names of exactly that shape are judged: the lab's ``flk-lab-<id>-*`` namespaces
    belong to ``flock lab``, which removes its own (``flock lab down``).
    """
    out = sh("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]
    pids = {name: _creator_pid(name) for name in names}
    return [name for name, pid in pids.items() if pid is not None and not os.path.exists(f"/proc/{pid}")]


# flk-<role>-<pid>-<serial><hex>; never the lab's flk-lab-<id>-<role>[-<name>].
_TEST_NAME = re.compile(r"^flk-(?!lab-)[a-z]+-(\d+)-[0-9a-f]+$")


def _creator_pid(name: str) -> str | None:
    found = _TEST_NAME.match(name)
    return found.group(1) if found else None


def host_ifname(container_id: str) -> str:
    """flock's host-side veth name for a container: ``flock`` + 8 hex chars."""
    return "flock" + hashlib.sha256(container_id.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class PlumbedPod:
    """A pod namespace wired to a node namespace the way the CNI plugin wires it."""

    netns: str
    container_id: str
    host_ifname: str
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    anycast: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


def plumb_pod(node_netns: str, pod_netns: str, container_id: str,
              ips: Sequence[str], anycast: Sequence[str]) -> PlumbedPod:
    """veth ``flock<8hex>`` (node) <-> eth0 (pod); pod IPs on eth0, anycast on lo.

    The pod's default routes go via link-local gateways on the host veth
    (169.254.1.1 and fe80::1), and the node has /32 and /128 routes to the pod IPs.
    """
    ifname = host_ifname(container_id)
    sh("ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", pod_netns,
       netns=node_netns)
    sh("sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=0", netns=node_netns)
    sh("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", netns=pod_netns)
    sh("ip", "addr", "add", "169.254.1.1/32", "dev", ifname, netns=node_netns)
    sh("ip", "addr", "add", "fe80::1/64", "dev", ifname, netns=node_netns)
    sh("ip", "link", "set", ifname, "up", netns=node_netns)
    sh("ip", "link", "set", "eth0", "up", netns=pod_netns)
    parsed = tuple(ipaddress.ip_address(ip) for ip in ips)
    for ip in parsed:
        sh("ip", "addr", "add", f"{ip}/{ip.max_prefixlen}", "dev", "eth0", "nodad", netns=pod_netns)
        sh("ip", "route", "replace", f"{ip}/{ip.max_prefixlen}", "dev", ifname, netns=node_netns)
    sh("ip", "route", "add", "169.254.1.1/32", "dev", "eth0", netns=pod_netns)
    sh("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", netns=pod_netns)
    sh("ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0", netns=pod_netns)
    any_parsed = tuple(ipaddress.ip_address(ip) for ip in anycast)
    for ip in any_parsed:
        sh("ip", "addr", "add", f"{ip}/{ip.max_prefixlen}", "dev", "lo", netns=pod_netns)
    return PlumbedPod(pod_netns, container_id, ifname, parsed, any_parsed)
