"""A pod's servers for the lab: HTTP (``served-by <pod>``) and a line echo for long-lived
connections (each line answered with ``<pod> <line>``).

Run inside a pod's netns:
``python -m flock.lab.podserver --name web-a-1 --listen 198.51.100.10 --listen 203.0.113.2``.
Listens on each address given, as an anycast service binds its anycast IPs (on lo) and
the pod's own IPs (which the kubelet emulator probes): HTTP on ``--port`` (80), the echo
on ``--echo-port`` (7, the echo service's).

On SIGTERM it does what a well-behaved server does during a pod's termination: stops
accepting (new connections are refused from then on), finishes the HTTP requests in
flight, answers the echo lines it has already received, then closes every long-lived
connection cleanly — a FIN (``shutdown(SHUT_WR)``), then it reads and discards until the
client closes its side (at most ``CLOSE_SECONDS``), so no unread byte turns the close into
a reset — and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

ECHO_PORT = 7
CLOSE_SECONDS = 0.5  # how long a closing echo connection waits for the client's FIN (an
# active client answers within its echo interval; one whose flow was re-hashed away never does)


async def serve(name: str, port: int, echo_port: int, addresses: list[str]) -> None:
    body = f"served-by {name}\n".encode()
    in_flight: set[asyncio.Task[None]] = set()
    echoes: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()

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

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        echoes.add(task)
        prefix = f"{name} ".encode()
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                line_task = asyncio.ensure_future(reader.readline())
                await asyncio.wait([line_task, stopping], return_when=asyncio.FIRST_COMPLETED)
                if not line_task.done():  # stopping, nothing received: close now
                    line_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError):
                        await line_task
                    break
                try:
                    line = line_task.result()
                except (OSError, asyncio.LimitOverrunError, ValueError):
                    return  # the client reset or misbehaved: nothing to close cleanly
                if not line.endswith(b"\n"):
                    break  # the client closed its side
                writer.write(prefix + line)
                await writer.drain()
                if stop.is_set():
                    break  # answered what was in flight
            # A clean close: FIN first, then wait for the client's FIN, discarding what
            # still arrives (unread data at close() would make the kernel send a reset).
            with contextlib.suppress(OSError):
                writer.write_eof()
                async with asyncio.timeout(CLOSE_SECONDS):
                    while await reader.read(4096):
                        pass
        except (OSError, TimeoutError):
            pass
        finally:
            stopping.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            echoes.discard(task)

    servers = [await asyncio.start_server(handle, host=address, port=port, reuse_address=True, backlog=1024)
               for address in addresses]
    servers += [await asyncio.start_server(echo, host=address, port=echo_port, reuse_address=True, backlog=1024)
                for address in addresses]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()  # stop accepting: new connections are refused from here on
    pending = list(in_flight | echoes)
    if pending:
        await asyncio.wait(pending, timeout=CLOSE_SECONDS + 3)


def main() -> None:
    parser = argparse.ArgumentParser(prog="flock-lab-podserver")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--echo-port", type=int, default=ECHO_PORT)
    parser.add_argument("--listen", action="append", required=True, help="an address to serve on (repeat)")
    args = parser.parse_args()
    asyncio.run(serve(args.name, args.port, args.echo_port, args.listen))


if __name__ == "__main__":
    main()
