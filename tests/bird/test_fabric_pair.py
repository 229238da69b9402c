"""Fabric features between a node BIRD rendered by flock and a ToR BIRD: TCP-MD5
passwords, BFD, communities, multihop on another port.

node (flk-node-*, AS 65101)  fl0  <->  fl0  ToR (flk-tor-*, AS 65000)
    192.0.2.2, 2001:db8:ffff::2             192.0.2.1, 2001:db8:ffff::1

The node's config goes the agent's way: parse_config, read_passwords (a real password
file), bird_view, render_bird_conf. The ToR's config is written here, as an operator
would write it for a router facing flock's nodes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pathlib
import re
import signal
import time
from typing import Any

import pytest

from flock.adapters.bird import render_bird_conf
from flock.adapters.configfile import read_passwords
from flock.core.birdview import bird_view
from flock.core.settings import parse_config
from tests.support import birdlab
from tests.support.netns import sh

pytestmark = [pytest.mark.bird, pytest.mark.slow]

NODE_ASN, TOR_ASN = 65101, 65000
PASSWORD = "flock test: not a secret \\ #;{}'$"  # a backslash, spaces, ; { } # ' $: all literal in BIRD
ANYCAST = "198.51.100.10/32"
POD_CIDR = "203.0.113.0/26"
CONVERGE = 60  # seconds; sessions come up in ~5 s


@dataclasses.dataclass
class Session:
    """How the ToR sees one node address."""

    node_address: str
    password: str | None = None
    bfd: bool = True
    multihop: bool = False
    local_address: str | None = None  # BIRD wants it for BFD on a multihop session
    local_port: int | None = None  # the ToR listens on this port instead of 179


def tor_config(router_id: str, sessions: list[Session]) -> str:
    """A ToR BIRD: accepts what the node sends, sends nothing, keeps routes in BIRD only."""
    protocols = []
    for i, session in enumerate(sessions):
        family = ipaddress.ip_address(session.node_address).version
        local = "".join([f" {session.local_address}" if session.local_address else "",
                         f" port {session.local_port}" if session.local_port else ""])
        options = [f"local{local} as {TOR_ASN};",
                   f"neighbor {session.node_address} as {NODE_ASN};",
                   "hold time 9; keepalive time 3; connect retry time 2;"]
        if session.password is not None:
            options.append(f'password "{session.password}";')
        if session.bfd:
            options.append("bfd on;")  # hard down on a BFD failure (not `bfd graceful`)
        if session.multihop:
            options.append("multihop 2;")
        if session.local_port:
            # Only the node connects (to this port): an outgoing session from the ToR to the
            # node's 179 could win the collision and the test would see that one.
            options.append("passive on;")
        options.append(f"ipv{family} {{ import all; export none; }};")
        body = "\n\t".join(options)
        protocols.append(f"protocol bgp node{i} {{\n\t{body}\n}}\n")
    return (f"log stderr all;\nrouter id {router_id};\nprotocol device {{}}\n"
            f"protocol bfd tor_bfd {{}}\n" + "".join(protocols))


def node_config(tmp_path: pathlib.Path, wire: birdlab.Link, password: str | None = PASSWORD,
                **peer_options: Any) -> str:
    """flock's bird.conf for the node, through the agent's own parsing and password reading."""
    peers: list[dict[str, Any]] = []
    for address in (str(wire.a_v4.ip), str(wire.a_v6.ip)):
        peer: dict[str, Any] = {"address": address, "asn": TOR_ASN, **peer_options}
        if password is not None:
            path = tmp_path / f"password-{len(peers)}"
            path.write_text(password + "\n")  # as `kubectl create secret --from-file` of an echo
            peer["passwordFile"] = str(path)
        peers.append(peer)
    config = read_passwords(parse_config({
        "nodeName": "node-a",
        "anycastPools": [{"cidr": "198.51.100.0/24", "communities": ["65000:100", "65000:1:2"]},
                         {"cidr": "2001:db8:100::/64"}],
        "podCIDRCommunities": ["65000:200"],
        "bird": {"routerId": str(wire.b_v4.ip), "asn": NODE_ASN, "peers": peers,
                 "bfd": {"intervalMs": 100, "multiplier": 3}},
    }, environ={}))
    view = bird_view(config=config, pod_cidrs=[ipaddress.ip_network(POD_CIDR)],
                     node_addresses=[wire.b_v4.ip, wire.b_v6.ip])
    return render_bird_conf(view)


def established(bird: birdlab.RunningBird, protocol: str) -> bool:
    return "Established" in bird.birdc("show", "protocols", protocol)


def bfd_sessions(bird: birdlab.RunningBird) -> dict[str, str]:
    """{peer address: BFD state} from ``birdc show bfd sessions``."""
    found = re.findall(r"^(\S+)\s+\S+\s+(Up|Down|Init|AdminDown)\b", bird.birdc("show", "bfd", "sessions"),
                       flags=re.MULTILINE)
    return dict(found)


def md5_failures(netns: str) -> int:
    """The namespace's TcpExt TCPMD5Failure counter: segments dropped for a wrong signature."""
    lines = [line.split() for line in sh("cat", "/proc/net/netstat", netns=netns).splitlines()
             if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("TCPMD5Failure")])


def add_anycast_route(node: str) -> None:
    """An anycast route as flock writes it (rtm_protocol 201, onlink via a pod)."""
    sh("ip", "link", "add", "pods", "type", "veth", "peer", "name", "pods-peer", netns=node)
    for ifname in ("pods", "pods-peer"):
        sh("ip", "link", "set", ifname, "up", netns=node)
    sh("ip", "route", "add", ANYCAST, "via", "203.0.113.11", "dev", "pods", "onlink", "proto", "201", netns=node)


async def test_a_session_with_the_password_comes_up_and_one_with_a_wrong_password_is_refused(
        make_netns: Any, birds: birdlab.Birds, tmp_path: pathlib.Path) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    wrong = [Session(str(wire.b_v4.ip), password="not the password"),
             Session(str(wire.b_v6.ip), password="not the password")]
    tor_bird = birds.start(tor, tor_config(str(wire.a_v4.ip), wrong))
    text = node_config(tmp_path, wire)
    node_bird = birds.start(node, text)
    assert text.count(f'password "{PASSWORD}";') == 2

    # Wrong password: the ToR's kernel drops the node's SYNs (bad TCP-MD5 signature).
    birdlab.wait_for(lambda: md5_failures(tor) >= 3, timeout=CONVERGE,
                     what="the ToR's kernel to drop the node's badly signed segments")
    assert not established(tor_bird, "node0") and not established(tor_bird, "node1")
    assert not established(node_bird, "flock_peer_192_0_2_1")

    # The same password at the ToR: both sessions come up.
    right = [dataclasses.replace(s, password=PASSWORD) for s in wrong]
    tor_bird.config_path.write_text(tor_config(str(wire.a_v4.ip), right))
    assert "Reconfigur" in tor_bird.birdc("configure")  # "Reconfigured" or "Reconfiguration in progress"
    birdlab.wait_for(lambda: established(tor_bird, "node0") and established(tor_bird, "node1"), timeout=CONVERGE,
                     what=f"both sessions with the password\n{tor_bird.birdc('show', 'protocols', 'all')}")
    birdlab.wait_for(lambda: POD_CIDR in tor_bird.birdc("show", "route", "protocol", "node0"), timeout=CONVERGE,
                     what="the pod CIDR at the ToR")
    assert PASSWORD not in node_bird.log() + node_bird.birdc("show", "protocols", "all")


async def test_bfd_comes_up_and_a_frozen_node_is_dropped_long_before_the_hold_time(
        make_netns: Any, birds: birdlab.Birds, tmp_path: pathlib.Path) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    tor_bird = birds.start(tor, tor_config(str(wire.a_v4.ip), [Session(str(wire.b_v4.ip)),
                                                                Session(str(wire.b_v6.ip))]))
    node_bird = birds.start(node, node_config(tmp_path, wire, password=None))
    birdlab.wait_for(lambda: bfd_sessions(tor_bird) == {str(wire.b_v4.ip): "Up", str(wire.b_v6.ip): "Up"},
                     timeout=CONVERGE, what=f"BFD up at the ToR\n{tor_bird.birdc('show', 'bfd', 'sessions')}")
    assert bfd_sessions(node_bird) == {str(wire.a_v4.ip): "Up", str(wire.a_v6.ip): "Up"}
    # The ToR detects the node's failure after the node's multiplier x the agreed interval:
    # the node's 100 ms x 3 (BFD's detect time is the remote side's multiplier).
    shown = tor_bird.birdc("show", "bfd", "sessions")
    assert len(re.findall(r"\bUp\s+\S+\s+0\.100\s+0\.300$", shown, flags=re.MULTILINE)) == 2, shown
    birdlab.wait_for(lambda: established(tor_bird, "node0"), timeout=CONVERGE, what="BGP up")

    # A hung node: BIRD frozen, no TCP close, no link change. The ToR's BFD notices it.
    os.kill(node_bird.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        birdlab.wait_for(lambda: not established(tor_bird, "node0"), timeout=8, interval=0.05,
                         what="the ToR to drop the frozen node's session before the 9 s hold time")
        detected = time.monotonic() - frozen
    finally:
        os.kill(node_bird.pid, signal.SIGCONT)
    assert detected < 5, f"{detected:.2f} s"  # 0.3 s of BFD; generous for a shared machine
    assert "BFD session down" in tor_bird.birdc("show", "protocols", "all", "node0")


async def test_communities_reach_the_tor(make_netns: Any, birds: birdlab.Birds, tmp_path: pathlib.Path) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    tor_bird = birds.start(tor, tor_config(str(wire.a_v4.ip), [Session(str(wire.b_v4.ip), bfd=False)]))
    birds.start(node, node_config(tmp_path, wire, password=None))
    add_anycast_route(node)

    def route(prefix: str) -> str:
        return tor_bird.birdc("show", "route", prefix, "all")

    birdlab.wait_for(lambda: ANYCAST in route(ANYCAST) and POD_CIDR in route(POD_CIDR), timeout=CONVERGE,
                     what=f"{ANYCAST} and {POD_CIDR} at the ToR\n{tor_bird.birdc('show', 'protocols', 'all')}")
    anycast, pods = route(ANYCAST), route(POD_CIDR)
    assert re.search(r"BGP\.community: \(65000,100\)$", anycast, flags=re.MULTILINE), anycast
    assert re.search(r"BGP\.large_community: \(65000, 1, 2\)$", anycast, flags=re.MULTILINE), anycast
    assert re.search(r"BGP\.community: \(65000,200\)$", pods, flags=re.MULTILINE), pods
    assert "large_community" not in pods


async def test_a_multihop_session_on_another_port_from_the_source_address_with_bfd(
        make_netns: Any, birds: birdlab.Birds, tmp_path: pathlib.Path) -> None:
    tor, node = make_netns("tor"), make_netns("node")
    wire = birdlab.link(tor, node, 0)
    sessions = [Session(str(wire.b_v4.ip), multihop=True, local_address=str(wire.a_v4.ip), local_port=1179),
                Session(str(wire.b_v6.ip), multihop=True, local_address=str(wire.a_v6.ip), local_port=1179)]
    birds.start(tor, tor_config(str(wire.a_v4.ip), sessions))
    text = node_config(tmp_path, wire, password=None, multihop=2, port=1179, sourceAddress="fromNodeIP")
    assert f"source address {wire.b_v6.ip};\t# fromNodeIP" in text
    node_bird = birds.start(node, text)
    birdlab.wait_for(lambda: established(node_bird, "flock_peer_192_0_2_1")
                     and established(node_bird, "flock_peer_2001_db8_ffff__1"), timeout=CONVERGE,
                     what=f"multihop sessions to port 1179\n{node_bird.birdc('show', 'protocols', 'all')}")
    birdlab.wait_for(lambda: bfd_sessions(node_bird) == {str(wire.a_v4.ip): "Up", str(wire.a_v6.ip): "Up"},
                     timeout=CONVERGE, what=f"multihop BFD up\n{node_bird.birdc('show', 'bfd', 'sessions')}")
    assert "1179" in sh("ss", "-tn", "state", "established", netns=node)
