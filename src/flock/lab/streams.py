"""The lab's long-lived connections: M TCP connections to the anycast IPs, each echoing
a short line every 100 ms, kept open through the rolling restart.

Run inside the client netns: ``python -m flock.lab.streams --target 198.51.100.10
--target 2001:db8:100::10 --count 60 --out streams.json``. Slot i connects to target
``i mod len(targets)`` (60 and two targets: 30 IPv4, 30 IPv6) on the pods' echo port and
sends ``<seq>\\n`` every ``--interval``; the pod answers ``<pod name> <seq>``, so every
connection knows which pod serves it, and the longest wait between two answers
(``maxGap``) shows a connection that stalled and recovered. When a connection ends — reset by a peer, closed
by the server (its FIN), no answer for ``STALL_SECONDS``, unreachable — its slot
connects again after ``--interval``, as a long-lived client (a gRPC channel, a database
pool) does. Until SIGTERM (or ``--duration``); then every open connection is closed by
the client and one record per connection is written (times: CLOCK_MONOTONIC, shared with
the lab controller), plus the connection attempts that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import signal
import socket
import time
from typing import Any

from flock.lab.podserver import ECHO_PORT

CONNECT_TIMEOUT = 1.0
STALL_SECONDS = 5.0  # no answer for this long: the connection is given up as stalled (longer than
# the lab's grace: a client does not give up on a connection that pauses for a few seconds)


def _ending(exc: BaseException) -> str:
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "stalled"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


async def connection(slot: int, target: str, port: int, interval: float, stop: asyncio.Event,
                     lives: list[dict[str, Any]], failures: list[dict[str, Any]]) -> None:
    """One slot: connect, echo until the connection ends, connect again; until ``stop``."""
    initial = True
    while not stop.is_set():
        attempted = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(target, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            outcome = ("refused" if isinstance(exc, ConnectionRefusedError) else
                       "timeout" if isinstance(exc, TimeoutError) else _ending(exc))
            failures.append({"slot": slot, "target": target, "at": attempted, "outcome": outcome})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            continue
        opened = time.monotonic()
        sock = writer.get_extra_info("socket")
        local = sock.getsockname() if sock is not None else ("", 0)
        life: dict[str, Any] = {"slot": slot, "target": target, "localPort": local[1], "initial": initial,
                                "opened": opened, "servedBy": "", "lastOk": None, "echoes": 0,
                                "maxGap": 0.0, "end": None, "outcome": "open"}
        lives.append(life)
        initial = False
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        seq = 0
        try:
            while not stop.is_set():
                seq += 1
                writer.write(b"%d\n" % seq)
                await writer.drain()
                async with asyncio.timeout(STALL_SECONDS):
                    line = await reader.readline()
                if not line:
                    life["outcome"] = "closed"  # the server's FIN
                    break
                name, _, echoed = line.decode(errors="replace").strip().partition(" ")
                if echoed != str(seq):
                    life["outcome"] = "error"
                    break
                life["servedBy"] = life["servedBy"] or name
                now = time.monotonic()
                life["maxGap"] = max(life["maxGap"], now - (life["lastOk"] or opened))
                life["lastOk"] = now
                life["echoes"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        except (OSError, TimeoutError) as exc:
            life["outcome"] = _ending(exc)
        finally:
            life["end"] = time.monotonic()
            if life["outcome"] != "open":  # waiting for an answer that never came counts too
                life["maxGap"] = max(life["maxGap"], life["end"] - (life["lastOk"] or opened))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def run(targets: list[str], port: int, count: int, interval: float,
              duration: float | None) -> dict[str, list[dict[str, Any]]]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    lives: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    tasks = []
    for slot in range(count):
        tasks.append(asyncio.create_task(
            connection(slot, targets[slot % len(targets)], port, interval, stop, lives, failures)))
        await asyncio.sleep(interval / max(count, 1))  # spread the echoes over the interval
    await asyncio.gather(*tasks)
    return {"connections": lives, "connectFailures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-streams")
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--port", type=int, default=ECHO_PORT)
    parser.add_argument("--count", type=int, default=60, help="long-lived connections, spread over the targets")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two echoes")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = asyncio.run(run(args.target, args.port, args.count, args.interval, args.duration))
    with open(args.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
