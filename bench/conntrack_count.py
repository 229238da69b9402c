"""What does counting pinned connections cost? flock's ctnetlink count beside the
``conntrack`` CLI, at N conntrack entries.

Builds a throw-away namespace ``flk-bench-<pid>-<hex>`` and fills its conntrack table
through ctnetlink (tests/support/conntrack.py) with N ESTABLISHED TCP entries (IPv4 and
IPv6, a tenth of them TIME_WAIT) pinned over ``--pods`` slots of the default mark mask,
plus N/2 entries that are not pinned (mark 0x4000, kube-proxy's), then times, best of
``--rounds``, in the same run:

  * the kernel's part: one CT_GET dump filtered by a mark that matches nothing (the walk
    of the whole conntrack hash table, whose size ``nf_conntrack_buckets`` says)
  * ConntrackCounter.count(every slot): what the agent's full count does (the fewest
    dumps: one per slot, or one per bit of the mask), entries decoded and counted
  * ConntrackCounter.count(one slot): a terminating pod's count, every tick
  * reference: ``conntrack -L -m <mark>/<mask>`` for one slot, and ``conntrack -L`` of the
    whole table (a process each, text out; counting ESTABLISHED lines)

and checks that flock's counts match the CLI's. Needs root; touches nothing outside its
own namespace, which it deletes at the end, also on failure.

    .venv/bin/python bench/conntrack_count.py [--entries 1000,10000] [--pods 10] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from flock.adapters import conntrack as ct
from flock.adapters.netns import named
from flock.adapters.plumbing import in_netns
from flock.core.drain import dump_filters
from flock.core.pinning import DEFAULT_MARK_MASK, slot_mark
from tests.support import netns as ns
from tests.support.conntrack import Entry, make_entries

MASK = DEFAULT_MARK_MASK
BUCKETS = pathlib.Path("/proc/sys/net/netfilter/nf_conntrack_buckets")
TIME_WAIT = 7


def entries(count: int, pods: int) -> list[Entry]:
    made = []
    for i in range(count):
        client = f"192.0.2.{i % 250 + 1}" if i % 2 else f"2001:db8::{i % 250 + 1:x}"
        server = "198.51.100.10" if i % 2 else "2001:db8:100::10"
        state = TIME_WAIT if i % 10 == 9 else 3
        made.append(Entry(client, server, 1024 + i // 250, tcp_state=state, mark=slot_mark(i % pods + 1, MASK)))
    for i in range(count // 2):
        made.append(Entry(f"192.0.2.{i % 250 + 1}", "198.51.100.99", 1024 + i // 250, mark=0x4000))
    return made


async def best(rounds: int, call: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return min(times)


def cli(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-L", *args], capture_output=True, text=True,
                          check=True).stdout


def walk_once() -> None:
    with ct.ctnl_socket(10) as sock:
        sock.dump_each(ct.CT_GET, ct.dump_request(slot_mark(MASK >> 20, MASK), MASK), lambda *_: None)


async def run(count: int, pods: int, rounds: int) -> None:
    netns = ns.create(ns.new_name("bench"))
    try:
        await in_netns(named(netns), 300, make_entries, entries(count, pods))
        counter = ct.ConntrackCounter(mask=MASK, host_netns=netns)
        slots = list(range(1, pods + 1))
        got = await counter.count(slots)
        one = f"0x{slot_mark(1, MASK):x}/0x{MASK:x}"
        cli_one = sum(" ESTABLISHED " in line for line in cli(netns, "-m", one).splitlines())
        assert got.get(1, 0) == cli_one, (got, cli_one)
        assert sum(got.values()) == count - count // 10, got

        walk = await best(rounds, lambda: in_netns(named(netns), 60, walk_once))
        full = await best(rounds, lambda: counter.count(slots))
        single = await best(rounds, lambda: counter.count([1]))
        ref_one = await best(rounds, lambda: asyncio.to_thread(cli, netns, "-m", one))
        ref_all = await best(rounds, lambda: asyncio.to_thread(cli, netns))
        buckets = BUCKETS.read_text().strip()  # noqa: ASYNC240 - a tiny /proc read
        dumps = len(dump_filters(slots, MASK))
        print(f"\n{count:,} pinned entries over {pods} slots (+{count // 2:,} not pinned), "
              f"nf_conntrack_buckets={buckets}, best of {rounds}:")
        print(f"  one dump matching nothing (the table walk)        {walk * 1e3:8.1f} ms")
        print(f"  ConntrackCounter.count(all {pods} slots, {dumps} dumps)   {full * 1e3:8.1f} ms"
              f"   ({full / ref_all:.2f}x conntrack -L)")
        print(f"  ConntrackCounter.count(one slot)                  {single * 1e3:8.1f} ms"
              f"   ({single / ref_one:.2f}x conntrack -L -m)")
        print(f"  reference: conntrack -L -m {one}   {ref_one * 1e3:8.1f} ms")
        print(f"  reference: conntrack -L (whole table)             {ref_all * 1e3:8.1f} ms")
    finally:
        ns.delete(netns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", default="1000,10000")
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for count in (int(n) for n in args.entries.split(",")):
        asyncio.run(run(count, args.pods, args.rounds))


if __name__ == "__main__":
    main()
