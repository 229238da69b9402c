"""A pod's HTTP server for the lab: answers every request with ``served-by <pod>``.

Run inside a pod's netns:
``python -m flock.lab.podserver --name web-a-1 --listen 198.51.100.10 --listen 203.0.113.2``.
Listens on each address given, as an anycast service binds its anycast IPs (on lo) and
the pod's own IPs (which the kubelet emulator probes). On SIGTERM it stops accepting,
finishes what is in flight, and exits — what a well-behaved server does during a pod's
termination.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


async def serve(name: str, port: int, addresses: list[str]) -> None:
    body = f"served-by {name}\n".encode()
    in_flight: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        in_flight.add(task)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                async with asyncio.timeout(5):
                    await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            with contextlib.suppress(OSError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            in_flight.discard(task)

    servers = [await asyncio.start_server(handle, host=address, port=port, reuse_address=True, backlog=1024)
               for address in addresses]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()  # stop accepting: new connections are refused from here on
    if in_flight:
        await asyncio.wait(list(in_flight), timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-podserver")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--listen", action="append", required=True, help="an address to serve on (repeat)")
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.port, args.listen))


if __name__ == "__main__":
    main()
