"""What does connection pinning cost the datapath? Packets per second forwarded by a node
with flock's pinning beside the same node without it, and conntrack memory per flow.

Throw-away namespaces ``flk-bench-<pid>-<hex>``, IPv4::

    client ── node (forwarding; strict rp_filter, the veths loose) ──┬─ pod-0  lo: 198.51.100.10
    192.0.2.2   192.0.2.1   198.51.100.10/32 → resilient group      ├─ pod-1
                            of the 3 pods (flock's NetlinkRoutes)    └─ pod-2

The anycast route goes in through flock's route adapter (``NetlinkRoutes``, a resilient
next-hop group, the agent's default) and ECMP hashes the 5-tuple as the agent sets it.
Each pod (and the client) drops the benchmark's packets at its eth0's ingress (an
nftables netdev chain: no socket, no ICMP back). The node runs in four modes, switched in
place and interleaved in every round, so that the machine's noise falls on all alike:

  plain       no nftables table, no ip rule: no conntrack in the node at all
  conntrack   no pinning, but conntrack loaded by one ``ct state invalid drop`` forward
              rule, as kube-proxy's KUBE-FORWARD chain has: the node such a cluster has
  pinned      flock's pinning of the 3 pods through flock's adapter
              (``PinningTable.adopt``: the ``inet flock`` table, its ip rules and per-pod
              tables, as the agent writes them), with daisy chaining as the agent's default
              has it (its rules in the table, a ring with one other node: its links, tables
              and ip rules, ``DaisyChain.apply``); adopting with pinning off removes it all
  pinned-N    the same with ``--pins`` pods pinned on the node: the others on links of
              their own (veth pairs inside the node), pinned first, the 3 pods last
              (``PinningTable.pin``, as CNI ADDs do), so their ip rules are the last of the
              N that the kernel walks, as a new pod's are

Traffic: a small C sender (compiled here with ``cc``: Python's ``sendto`` would be the
bottleneck) sends 60-byte frames (18-byte UDP payload) with ``sendmmsg``, pinned to one
CPU. On veths the whole path, from the sender's syscall through the node's forwarding to
the receiver's ingress, runs in that CPU's softirq, so a rate is what one core does,
sender included. So each row also has a *floor*: the same sender, its packets dropped as
they enter the node (a netdev ingress rule, there for that run only); the node's own
cost per packet is then 1/pps - 1/floor. Packets are counted where they leave the node
(the receivers' eth0 rx, = the node's veth tx), not where they are sent.

  new flows    client -> anycast, every packet a new 5-tuple (the destination port
               changes, over a few source ports): conntrack creates an entry per packet and
               flock's postrouting chain saves its pod in the mark. The node's conntrack
               table is flushed before.
  established  client -> anycast, a few long flows (connected sockets, round robin):
               conntrack finds the entry, flock's prerouting chain restores the mark, and
               the packet is routed by its ip rule to the pod's table.
  other        pod-0 -> client, a few long flows: traffic flock does not pin (a pod's
               replies and its own connections, pod to pod ...) still walks every ip rule
               before the main table.

Memory: per mode, ``--memory-flows`` new flows through the node; every slab cache's bytes
in use (``/proc/slabinfo``: active objects x object size, summed, so conntrack entries and
any conntrack extension kmalloc'd beside them) before and after, per entry the node's
conntrack then holds (its ``nf_conntrack_count``). The nf_conntrack cache's object size
comes from ``/sys/kernel/slab``.

Needs root and ``cc``; touches nothing outside its own namespaces, which it deletes at the
end, also on failure. A sender that overruns is stopped by its PID.

    .venv/bin/python bench/forwarding.py [--rounds 7] [--seconds 2] [--new-flows 150000]
                                         [--flows 8] [--pins 100] [--memory-flows 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from flock.adapters.daisychain import DaisyChain
from flock.adapters.netlink import NetlinkRoutes
from flock.adapters.pinning import PinningTable
from flock.core.daisychain import DEFAULT_PORT, ChainPlan, DaisyChainConfig, Member, plan_chain
from flock.core.model import Nexthop
from flock.core.pinning import DEFAULT_MARK_MASK, PodPin, chain_mark
from flock.core.routediff import ReplaceRoute
from tests.support import netns as ns
from tests.support.netns import PlumbedPod, plumb_pod, sh

ANYCAST = ipaddress.IPv4Address("198.51.100.10")
CLIENT = ipaddress.IPv4Address("192.0.2.2")
FLOOR = ipaddress.IPv4Address("198.51.100.99")
POOLS = [ipaddress.ip_network("198.51.100.0/24")]
PROTO, WITHDRAWN_PROTO, LAST_RESORT_PROTO = 201, 202, 203
PODS = 3
DUMMY_IPS = 150
"""The pinned-N mode's other pods take 203.0.113.100 and up."""
REFERENCE_TABLE = "flk_bench_kube_proxy_like"
FLOOR_TABLE = "flk_bench_floor"
SLAB = pathlib.Path("/sys/kernel/slab/nf_conntrack")

SENDER_C = r"""
/* Small UDP packets as fast as sendmmsg goes.
 *   new DST PACKETS SOCKETS   every packet a new 5-tuple: dport 1024..65535 x SOCKETS sports
 *   est DST MILLIS FLOWS      FLOWS connected sockets, round robin, for MILLIS ms
 * Prints "sent <packets> <nanoseconds>". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXSOCK 64

static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: new|est DST N SOCKETS\n"); return 2; }
    int est = strcmp(argv[1], "est") == 0;
    long long amount = atoll(argv[3]);
    int nsock = atoi(argv[4]);
    if (nsock < 1 || nsock > MAXSOCK) { fprintf(stderr, "1-%d sockets\n", MAXSOCK); return 2; }
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(9) };
    if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int socks[MAXSOCK];
    for (int i = 0; i < nsock; i++) {
        socks[i] = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in src = { .sin_family = AF_INET, .sin_port = htons(40000 + i) };
        int big = 1 << 22;
        setsockopt(socks[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        if (socks[i] < 0 || bind(socks[i], (struct sockaddr *)&src, sizeof src) != 0) { perror("bind"); return 1; }
        if (est && connect(socks[i], (struct sockaddr *)&dst, sizeof dst) != 0) { perror("connect"); return 1; }
    }
    char payload[18] = "flock forwarding!";
    struct iovec iov = { payload, sizeof payload };
    struct sockaddr_in names[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        names[i] = dst;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (!est) { msgs[i].msg_hdr.msg_name = &names[i]; msgs[i].msg_hdr.msg_namelen = sizeof names[i]; }
    }
    long long sent = 0, start = now(), deadline = start + amount * 1000000LL;
    int turn = 0, port = 1024;
    for (;;) {
        int want = BATCH;
        if (est) {
            if (now() >= deadline) break;
        } else {
            if (sent >= amount) break;
            if (amount - sent < want) want = (int)(amount - sent);
            if (port + want > 65536) want = 65536 - port;
            for (int i = 0; i < want; i++) names[i].sin_port = htons(port + i);
        }
        int n = sendmmsg(socks[turn], msgs, want, 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) continue;
            perror("sendmmsg"); return 1;
        }
        sent += n;
        if (est) {
            turn = (turn + 1) % nsock;
        } else {
            port += n;
            if (port >= 65536) {  /* every dport used on this socket: next source port */
                port = 1024;
                if (++turn == nsock) { fprintf(stderr, "out of 5-tuples\n"); return 1; }
            }
        }
    }
    printf("sent %lld %lld\n", sent, now() - start);
    return 0;
}
"""


@dataclass
class Lab:
    client: str
    node: str
    pods: list[PlumbedPod]
    sender: pathlib.Path
    cpu: int
    pins: int
    """Pods pinned in the pinned-N mode (the 3 real ones included)."""

    @property
    def modes(self) -> tuple[str, ...]:
        return ("plain", "conntrack", "pinned", f"pinned-{self.pins}")

    def real_pins(self, first_slot: int) -> list[PodPin]:
        return [PodPin(first_slot + n, pod.host_ifname, pod.ips) for n, pod in enumerate(self.pods)]

    def dummy_pins(self) -> list[PodPin]:
        return [PodPin(n + 1, f"flkdummy{n}", (ipaddress.IPv4Address("203.0.113.100") + n,))
                for n in range(self.pins - PODS)]

    def table(self, enabled: bool) -> PinningTable:
        # The agent's default datapath: pinning with daisy chaining's rules in the table.
        return PinningTable(enabled=enabled, mask=DEFAULT_MARK_MASK, pools=POOLS, protocol=PROTO,
                            host_netns=self.node, chain_port=DEFAULT_PORT)

    def chain(self) -> DaisyChain:
        return DaisyChain(port=DEFAULT_PORT, protocol=PROTO, mark=chain_mark(DEFAULT_MARK_MASK),
                          mask=DEFAULT_MARK_MASK, host_netns=self.node)

    async def ring(self, on: bool) -> None:
        """Daisy chaining's ring with one other node (its links, tables and ip rules, as the
        agent writes them; the other node need not exist: only the rules' cost counts), or none."""
        members = [Member("bench-node", ipaddress.IPv4Address("192.0.2.1")),
                   Member("bench-peer", ipaddress.IPv4Address("192.0.2.254"))]
        plan = plan_chain(members, "bench-node", DaisyChainConfig(), POOLS) if on else ChainPlan()
        await self.chain().apply(plan)


def compile_sender(where: pathlib.Path) -> pathlib.Path:
    source, binary = where / "sender.c", where / "sender"
    source.write_text(SENDER_C)
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(source)], check=True)
    return binary


def sink(netns: str, dst: ipaddress.IPv4Address) -> None:
    """Drop UDP to ``dst`` as it enters ``netns``'s eth0 (after the link counted it)."""
    sh("nft", f'add table netdev sink; add chain netdev sink in {{ type filter hook ingress device "eth0" '
       f'priority 0; }}; add rule netdev sink in ip daddr {dst} udp dport != 0 drop', netns=netns)


async def build(client: str, node: str, pod_netns: list[str], sender: pathlib.Path, pins: int) -> Lab:
    sh("ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", client, netns=node)
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", "uplink", netns=node)
    sh("ip", "link", "set", "uplink", "up", netns=node)
    sh("ip", "addr", "add", f"{CLIENT}/24", "dev", "eth0", netns=client)
    sh("ip", "link", "set", "eth0", "up", netns=client)
    sh("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1", netns=client)
    sh("ip", "route", "add", "203.0.113.0/24", "via", "192.0.2.1", netns=client)
    sink(client, CLIENT)
    # As tests/kernel/test_pinning.py: strict rp_filter on the node, loose on flock's veths.
    for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "1"),
                       ("net.ipv4.conf.default.rp_filter", "1")):
        sh("sysctl", "-qw", f"{key}={value}", netns=node)
    pods = []
    for n, netns in enumerate(pod_netns):
        pod = plumb_pod(node, netns, f"forwarding-{n}", [f"203.0.113.1{n}"], [str(ANYCAST)])
        sh("sysctl", "-qw", f"net.ipv4.conf.{pod.host_ifname}.rp_filter=2", netns=node)
        sink(netns, ANYCAST)
        pods.append(pod)
    for n in range(pins - PODS):  # the other pinned pods' links: veth pairs inside the node (no dummy module here)
        sh("ip", "link", "add", f"flkdummy{n}", "up", "type", "veth", "peer", "name", f"flkdpeer{n}", netns=node)
        sh("ip", "link", "set", f"flkdpeer{n}", "up", netns=node)
    routes = NetlinkRoutes(protocol=PROTO, withdrawn_protocol=WITHDRAWN_PROTO, last_resort_protocol=LAST_RESORT_PROTO,
                           netns=node, nexthop_groups="resilient")
    await routes.start()
    try:
        assert routes.mode == "resilient", routes.fallback
        warnings = await routes.set_multipath_hash_policy()
        assert not warnings, warnings
        hops = tuple(sorted((Nexthop(pod.ips[0], pod.host_ifname) for pod in pods), key=Nexthop.sort_key))
        errors = await routes.apply([ReplaceRoute(ANYCAST, hops, new=True)])
        assert not any(errors), errors
    finally:
        await routes.close()
    # Resolve the neighbours once, so no run pays for ARP.
    sh("ping", "-c1", "-W1", "192.0.2.1", netns=client)
    for pod in pods:
        sh("ping", "-c1", "-W1", str(pod.ips[0]), netns=node)
    sh("ping", "-c1", "-W1", str(CLIENT), netns=pods[0].netns)
    return Lab(client, node, pods, sender, cpu=(os.cpu_count() or 1) - 1, pins=pins)


async def set_mode(lab: Lab, mode: str) -> None:
    """Switch the node to ``mode`` (see the module docstring) and flush its conntrack table."""
    sh("nft", "delete", "table", "inet", REFERENCE_TABLE, netns=lab.node, check=False)
    if mode == "pinned":
        done = await lab.table(True).adopt(lab.real_pins(1))
        assert not done.problems, done.problems
        await lab.ring(True)
    elif mode.startswith("pinned-"):
        table = lab.table(True)
        done = await table.adopt(lab.dummy_pins())
        assert not done.problems, done.problems
        for pin in lab.real_pins(lab.pins - PODS + 1):  # one at a time, as CNI ADDs
            await table.pin(pin)
        await lab.ring(True)
    else:
        await lab.ring(False)
        done = await lab.table(False).adopt([])
        assert not done.problems, done.problems
    if mode == "conntrack":
        sh("nft", f"add table inet {REFERENCE_TABLE}; add chain inet {REFERENCE_TABLE} forward {{ type filter "
           f"hook forward priority 0; }}; add rule inet {REFERENCE_TABLE} forward ct state invalid drop",
           netns=lab.node)
    rules = sh("ip", "rule", "show", "pref", "1000", netns=lab.node).count("fwmark")
    wanted = {"pinned": PODS}.get(mode, lab.pins if mode.startswith("pinned-") else 0)
    assert rules == wanted, f"{mode}: {rules} ip rules"
    flush_conntrack(lab)


def flush_conntrack(lab: Lab) -> None:
    sh("conntrack", "-F", netns=lab.node, check=False, timeout=120)  # an empty table is exit 1


def conntrack_count(lab: Lab) -> int:
    return int(sh("sysctl", "-n", "net.netfilter.nf_conntrack_count", netns=lab.node, check=False) or 0)


def link_packets(netns: str, dev: str, direction: str) -> int:
    link = json.loads(sh("ip", "-j", "-s", "link", "show", dev, netns=netns))[0]
    return int(link["stats64"][direction]["packets"])


@dataclass(frozen=True)
class Stream:
    """One row: who sends what to whom, where it is counted, where its floor is dropped."""

    label: str
    kind: str  # the sender's "new" or "est"
    source: str  # netns
    dst: ipaddress.IPv4Address
    counted: tuple[tuple[str, str], ...]  # (netns, dev): rx packets there
    entry: str  # the node's link the packets enter by (the floor is dropped there)


def streams(lab: Lab, new_flows: int, flows: int) -> list[Stream]:
    pods = tuple((pod.netns, "eth0") for pod in lab.pods)
    return [Stream(f"new flows ({new_flows // 1000}k)", "new", lab.client, ANYCAST, pods, "uplink"),
            Stream(f"established ({flows} flows)", "est", lab.client, ANYCAST, pods, "uplink"),
            Stream(f"other ({flows} flows)", "est", lab.pods[0].netns, CLIENT, ((lab.client, "eth0"),),
                   lab.pods[0].host_ifname)]


@dataclass
class Run:
    sent: int
    seconds: float
    per_receiver: list[int]

    @property
    def received(self) -> int:
        return sum(self.per_receiver)

    @property
    def pps(self) -> float:
        return self.received / self.seconds


def sender(lab: Lab, netns: str, kind: str, dst: ipaddress.IPv4Address, amount: int, sockets: int,
           limit: float) -> tuple[int, float]:
    """One sender run in ``netns``, pinned to one CPU: (packets sent, seconds).
    Stopped by its PID if it overruns ``limit`` seconds."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "taskset", "-c", str(lab.cpu), str(lab.sender),
                             kind, str(dst), str(amount), str(sockets)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=limit)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"sender failed ({proc.returncode}): {err.strip()}")
    _, sent, nanoseconds = out.split()
    return int(sent), int(nanoseconds) / 1e9


def send(lab: Lab, stream: Stream, amount: int, sockets: int, limit: float) -> Run:
    """The stream through the node, counted as it reaches its receivers."""
    before = [link_packets(netns, dev, "rx") for netns, dev in stream.counted]
    sent, seconds = sender(lab, stream.source, stream.kind, stream.dst, amount, sockets, limit)
    after = [link_packets(netns, dev, "rx") for netns, dev in stream.counted]
    return Run(sent, seconds, [b - a for a, b in zip(before, after, strict=True)])


def send_floor(lab: Lab, stream: Stream, amount: int, sockets: int, limit: float) -> Run:
    """The same packets to FLOOR, dropped as they enter the node (a netdev ingress rule on the
    link they enter by, there for this run only): the sender and the veth, not the node."""
    sh("nft", f'add table netdev {FLOOR_TABLE}; add chain netdev {FLOOR_TABLE} in {{ type filter hook ingress '
       f'device "{stream.entry}" priority 0; }}; add rule netdev {FLOOR_TABLE} in ip daddr {FLOOR} drop',
       netns=lab.node)
    try:
        before = link_packets(lab.node, stream.entry, "rx")
        sent, seconds = sender(lab, stream.source, stream.kind, FLOOR, amount, sockets, limit)
        after = link_packets(lab.node, stream.entry, "rx")
    finally:
        sh("nft", "delete", "table", "netdev", FLOOR_TABLE, netns=lab.node)
    return Run(sent, seconds, [after - before])


def slab_in_use() -> int:
    """Bytes of every slab cache's objects in use (active objects x object size)."""
    total = 0
    with open("/proc/slabinfo") as file:
        for line in file:
            fields = line.split()
            if len(fields) > 3 and fields[1].isdigit():
                total += int(fields[1]) * int(fields[3])
    return total


def slab_objects(name: str) -> int:
    with open("/proc/slabinfo") as file:
        for line in file:
            if line.split()[0] == name:
                return int(line.split()[1])
    return 0


@dataclass
class Memory:
    entries: int
    slab_bytes: int
    conntrack_objects: int
    pinned_entries: int


def memory(lab: Lab, mode: str, flows: int) -> Memory:
    """``flows`` new flows through the node in ``mode``: what its conntrack and the slabs then hold more."""
    flush_conntrack(lab)
    stream = streams(lab, flows, 1)[0]
    base_entries, base_slab, base_ct = conntrack_count(lab), slab_in_use(), slab_objects("nf_conntrack")
    send(lab, stream, flows, flows // 64_512 + 1, limit=120)
    entries, slab, ct = conntrack_count(lab), slab_in_use(), slab_objects("nf_conntrack")
    pinned = 0
    if mode.startswith("pinned"):
        listing = sh("conntrack", "-L", "-m", f"0/0x{DEFAULT_MARK_MASK:x}", netns=lab.node, check=False, timeout=120)
        pinned = entries - base_entries - sum(1 for line in listing.splitlines() if "dport=" in line)
    flush_conntrack(lab)
    return Memory(entries - base_entries, slab - base_slab, ct - base_ct, pinned)


@contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    made: list[str] = []
    try:
        for _ in range(count):
            made.append(ns.create(ns.new_name("bench")))
        yield made
    finally:
        for name in reversed(made):
            ns.delete(name)


def slab_facts() -> str:
    try:
        size = int((SLAB / "object_size").read_text())
        slot = int((SLAB / "slab_size").read_text())
        per = int((SLAB / "objs_per_slab").read_text())
        order = int((SLAB / "order").read_text())
    except OSError as exc:
        return f"/sys/kernel/slab/nf_conntrack: {exc.strerror}"
    return (f"struct nf_conn {size} B, {slot} B a slot in the nf_conntrack cache "
            f"({per} per {4096 << order} B slab)")


def kernel_facts(lab: Lab) -> str:
    def get(key: str) -> str:
        return sh("sysctl", "-n", f"net.netfilter.{key}", netns=lab.node, check=False).strip()
    return (f"extensions that add to an entry: nf_conntrack_acct={get('nf_conntrack_acct')}, "
            f"nf_conntrack_timestamp={get('nf_conntrack_timestamp')}, "
            f"nf_conntrack_events={get('nf_conntrack_events')} (2: only while someone listens to events)")


def row(label: str, floor: list[Run], runs: dict[str, list[Run]], modes: tuple[str, ...]) -> None:
    """kpps (best, median) per mode, and the node's nanoseconds per packet: 1/pps less the floor's."""
    floor_best = max(r.pps for r in floor)
    best = {m: max(r.pps for r in runs[m]) for m in modes}
    median = {m: statistics.median(r.pps for r in runs[m]) for m in modes}
    node_ns = {m: 1e9 / best[m] - 1e9 / floor_best for m in modes}
    pinned, many = modes[2], modes[3]
    cells = "".join(f"{best[m] / 1e3:8.1f} ({median[m] / 1e3:5.1f})" for m in modes)
    print(f"  {label:<26}{floor_best / 1e3:8.1f} ({statistics.median(r.pps for r in floor) / 1e3:5.1f}){cells}   "
          f"{pinned}/plain {best[pinned] / best['plain']:.2f}x, {pinned}/conntrack "
          f"{best[pinned] / best['conntrack']:.2f}x, {many}/conntrack {best[many] / best['conntrack']:.2f}x")
    ns_cells = "".join(f"{node_ns[m]:16.0f}" for m in modes)
    print(f"  {'  the node, ns per packet':<26}{'':16}{ns_cells}   {pinned} "
          f"{node_ns[pinned] - node_ns['conntrack']:+.0f} ns, {many} {node_ns[many] - node_ns['conntrack']:+.0f} ns "
          "vs conntrack")
    spreads = ", ".join(f"{(max(r.pps for r in runs[m]) - min(r.pps for r in runs[m])) / median[m] * 100:.0f}%"
                        for m in modes)
    floor_spread = (max(r.pps for r in floor) - min(r.pps for r in floor)) / statistics.median(r.pps for r in floor)
    print(f"  {'  spread, (max-min)/median':<26}{floor_spread * 100:15.0f}%"
          + "".join(f"{s:>16}" for s in spreads.split(", ")), flush=True)


def print_memory(results: dict[str, list[Memory]], flows: int) -> None:
    for mode, got in results.items():
        entries = statistics.median(m.entries for m in got)
        if not entries:
            delta = statistics.median(m.slab_bytes for m in got)
            print(f"  {mode:<11} no conntrack entry; every slab's bytes in use {delta / flows:+6.1f} B per flow "
                  "(the rest of the machine's noise)")
            continue
        objects = statistics.median(m.conntrack_objects / m.entries for m in got)
        per = [m.slab_bytes / m.entries for m in got]
        pinned = (f", {statistics.median(m.pinned_entries for m in got):,.0f} of them pinned"
                  if mode.startswith("pinned") else "")
        print(f"  {mode:<11} {entries:,.0f} entries{pinned}: {objects:.3f} nf_conntrack objects per entry; "
              f"every slab's bytes in use {statistics.median(per):6.1f} B per entry "
              f"({', '.join(f'{p:.1f}' for p in per)})")


async def run(rounds: int, seconds: float, new_flows: int, flows: int, pins: int, memory_flows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="flk-bench-") as tmp, namespaces(2 + PODS) as names:
        binary = compile_sender(pathlib.Path(tmp))
        lab = await build(names[0], names[1], names[2:], binary, pins)
        modes = lab.modes
        print(f"node: 1 anycast /32 through a resilient group of {PODS} pods, IPv4; sender on CPU {lab.cpu}; "
              f"60-byte frames; {rounds} rounds, the modes interleaved in each", flush=True)
        sockets = new_flows // 64_512 + 1
        millis = int(seconds * 1000)
        rows = streams(lab, new_flows, flows)
        runs: dict[str, dict[str, list[Run]]] = {s.label: {m: [] for m in modes} for s in rows}
        floors: dict[str, list[Run]] = {s.label: [] for s in rows}

        def amount(stream: Stream) -> tuple[int, int, float]:
            if stream.kind == "new":
                return new_flows, sockets, 60.0
            return millis, flows, seconds + 30

        for n in range(rounds):
            await set_mode(lab, "plain")
            for stream in rows:
                floors[stream.label].append(send_floor(lab, stream, *amount(stream)))
            for mode in modes if n % 2 == 0 else tuple(reversed(modes)):
                await set_mode(lab, mode)
                for stream in rows:
                    runs[stream.label][mode].append(send(lab, stream, *amount(stream)))
                    if stream.kind == "new" and mode != "plain":
                        tracked = conntrack_count(lab)
                        assert tracked >= 0.99 * runs[stream.label][mode][-1].sent, f"{mode}: {tracked} entries"
                    flush_conntrack(lab)
        for label, by_mode in runs.items():
            for got in (floors[label], *by_mode.values()):
                for r in got:
                    assert r.received >= 0.99 * r.sent, f"{label}: sent {r.sent}, received {r.received}"
                    assert all(r.per_receiver), f"{label}: ECMP left a pod out: {r.per_receiver}"

        print(f"\npackets per second, best of {rounds} (median), kpps; the node's ns per packet = 1/pps - 1/floor:")
        print(f"  {'':<26}{'floor':>16}" + "".join(f"{m:>16}" for m in modes))
        for stream in rows:
            row(stream.label, floors[stream.label], runs[stream.label], modes)
        last = {s.label: runs[s.label]["pinned"][-1].per_receiver for s in rows[:2]}
        print(f"  (per pod, the last pinned runs: {last})")

        print(f"\nconntrack memory: {memory_flows:,} new flows through the node, 3 runs per mode (median):")
        print(f"  {slab_facts()}")
        print(f"  {kernel_facts(lab)}")
        results: dict[str, list[Memory]] = {m: [] for m in modes[:3]}
        for _ in range(3):
            for mode in results:
                await set_mode(lab, mode)
                results[mode].append(memory(lab, mode, memory_flows))
        print_memory(results, memory_flows)
        await set_mode(lab, "plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds (best and median of)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of an established-flows run")
    parser.add_argument("--new-flows", type=int, default=150_000, help="new 5-tuples per new-flow run")
    parser.add_argument("--flows", type=int, default=8, help="flows of an established run")
    parser.add_argument("--pins", type=int, default=100, help="pods pinned in the pinned-N mode")
    parser.add_argument("--memory-flows", type=int, default=50_000, help="new flows for the memory figure")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not PODS < args.pins <= PODS + DUMMY_IPS:
        parser.error(f"--pins must be {PODS + 1}-{PODS + DUMMY_IPS}")
    if not 0 < args.new_flows < 64 * 64_512 or not 0 < args.memory_flows < 64 * 64_512:
        parser.error("--new-flows and --memory-flows must be 1-4,128,767 (the sender's 5-tuples)")
    asyncio.run(run(args.rounds, args.seconds, args.new_flows, args.flows, args.pins, args.memory_flows))


if __name__ == "__main__":
    main()
