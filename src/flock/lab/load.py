"""The lab's client: HTTP load at the anycast IPs, one new TCP connection per request.

Run inside the client netns: ``python -m flock.lab.load --target 198.51.100.10 --target
2001:db8:100::10 --rate 200 --out results.json``. Starts ``rate`` requests per second per
target until SIGTERM (or ``--duration``), then waits for those in flight and writes one
record per request: start time (CLOCK_MONOTONIC, shared with the lab controller), end
time, target, outcome (ok, refused, reset, timeout, unreachable, error) and which pod
answered.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import signal
import time
from typing import Any

CONNECT_TIMEOUT = 1.0
REQUEST_TIMEOUT = 3.0


async def one_request(target: str, port: int) -> dict[str, Any]:
    started = time.monotonic()
    outcome, served_by = "ok", ""
    writer = None
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(target, port), CONNECT_TIMEOUT)
            writer.write(b"GET / HTTP/1.0\r\nHost: anycast\r\n\r\n")
            await writer.drain()
            response = await reader.read()
        if not response.startswith(b"HTTP/1.0 200"):
            outcome = "reset" if not response else "error"
        else:
            served_by = response.rsplit(b"served-by ", 1)[-1].strip().decode()
    except ConnectionRefusedError:
        outcome = "refused"
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    except OSError as exc:
        outcome = "unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error"
    finally:
        if writer is not None:
            writer.close()
    return {"start": started, "end": time.monotonic(), "target": target, "outcome": outcome, "servedBy": served_by}


async def run(targets: list[str], port: int, rate: float, duration: float | None) -> list[dict[str, Any]]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    interval = 1.0 / rate
    started = time.monotonic()
    tick = 0
    while not stop.is_set() and (duration is None or time.monotonic() - started < duration):
        for target in targets:
            tasks.append(asyncio.create_task(one_request(target, port)))
        tick += 1
        # Keep to the schedule (not "sleep interval"), so the rate holds under load.
        delay = started + tick * interval - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
    return list(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-load")
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second per target")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = asyncio.run(run(args.target, args.port, args.rate, args.duration))
    with open(args.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
