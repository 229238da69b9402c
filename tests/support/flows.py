"""Real TCP and UDP flows between network namespaces, all on the test's own event loop.

A socket belongs to the network namespace it was made in, whichever thread uses it
later: :func:`socket_in` makes one on a short-lived thread that enters the namespace,
and the test's event loop serves and drives it. So pods' echo servers and the clients'
flows run in one process, with nothing to stop but the sockets (closed by the owner).

Every reply names the pod that sent it (``<pod> <line>``), so a flow knows where each of
its packets went: a flow that is *kept* got every reply from the pod of its first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import threading
import time
import typing
from collections.abc import Sequence

from flock.adapters.netns import enter, named

PORT = 8080
REPLY_SECONDS = 2.0  # a reply later than this is a broken flow (generous: 2 CPUs shared)


def socket_in(netns: str, family: int, kind: int) -> socket.socket:
    """A new non-blocking socket of network namespace ``netns``."""
    made: list[socket.socket] = []
    problem: list[BaseException] = []

    def run() -> None:
        try:
            enter(named(netns))
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            problem.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if problem:
        raise problem[0]
    made[0].setblocking(False)
    return made[0]


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(f"{self.name} ".encode() + data, addr)


class EchoServers:
    """TCP and UDP echo servers on ``PORT`` of each pod's anycast addresses."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, name: str, netns: str, addresses: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                while line := await reader.readline():
                    writer.write(f"{name} ".encode() + line)
                    await writer.drain()
            except OSError:
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        for address in addresses:
            tcp = socket_in(netns, _family(address), socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, PORT))
            tcp.listen(256)
            self._servers.append(await asyncio.start_server(serve, sock=tcp))
            udp = socket_in(netns, _family(address), socket.SOCK_DGRAM)
            udp.bind((address, PORT))
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpEcho(name), sock=udp)
            self._transports.append(transport)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)


@dataclasses.dataclass
class Flow:
    """One long-lived flow's story."""

    kind: str  # "tcp" or "udp"
    pod: str | None = None  # the pod of its first reply
    replies: int = 0
    error: str | None = None  # "reset", "timeout", "closed", "refused", "moved to web-2"

    def __post_init__(self) -> None:
        self.started = asyncio.Event()  # set once the first reply named the pod

    @property
    def kept(self) -> bool:
        return self.error is None and self.pod is not None


def _reply_pod(line: bytes) -> str:
    return line.decode(errors="replace").split(" ", 1)[0]


async def long_lived_tcp(netns: str, address: str, stop: asyncio.Event, interval: float = 0.1) -> Flow:
    """Connect from ``netns``, then a line every ``interval`` s until ``stop``; never raises."""
    flow = Flow("tcp")
    loop = asyncio.get_running_loop()
    sock = socket_in(netns, _family(address), socket.SOCK_STREAM)
    writer: asyncio.StreamWriter | None = None
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (address, PORT)), REPLY_SECONDS)
        reader, writer = await asyncio.open_connection(sock=sock)
        serial = 0
        while True:
            serial += 1
            writer.write(f"{serial}\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), REPLY_SECONDS)
            if not line:
                flow.error = "closed"
                break
            pod = _reply_pod(line)
            if flow.pod is None:
                flow.pod = pod
                flow.started.set()
            elif pod != flow.pod:
                flow.error = f"moved to {pod}"
                break
            flow.replies += 1
            if stop.is_set():
                break
            await asyncio.sleep(interval)
    except ConnectionResetError:
        flow.error = "reset"
    except ConnectionRefusedError:
        flow.error = "refused"
    except TimeoutError:
        flow.error = "timeout"
    except OSError as exc:
        flow.error = exc.strerror or str(exc)
    finally:
        flow.started.set()
        if writer is not None:
            writer.close()
        else:
            sock.close()
    return flow


async def long_lived_udp(netns: str, address: str, stop: asyncio.Event, interval: float = 0.1) -> Flow:
    """One connected UDP socket from ``netns``: a datagram every ``interval`` s until ``stop``."""
    flow = Flow("udp")
    loop = asyncio.get_running_loop()
    sock = socket_in(netns, _family(address), socket.SOCK_DGRAM)
    try:
        sock.connect((address, PORT))
        serial = 0
        while True:
            serial += 1
            await loop.sock_sendall(sock, f"{serial}".encode())
            deadline = time.monotonic() + REPLY_SECONDS
            while True:  # a late reply to an earlier datagram is skipped
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), max(0.01, deadline - time.monotonic()))
                if data.decode(errors="replace").split(" ", 1)[-1] == str(serial):
                    break
            pod = _reply_pod(data)
            if flow.pod is None:
                flow.pod = pod
                flow.started.set()
            elif pod != flow.pod:
                flow.error = f"moved to {pod}"
                break
            flow.replies += 1
            if stop.is_set():
                break
            await asyncio.sleep(interval)
    except TimeoutError:
        flow.error = "timeout"
    except OSError as exc:
        flow.error = exc.strerror or str(exc)
    finally:
        flow.started.set()
        sock.close()
    return flow


async def one_request(netns: str, address: str) -> str:
    """A new TCP connection from ``netns``: the pod that answered, or what went wrong."""
    never = asyncio.Event()
    never.set()
    flow = await long_lived_tcp(netns, address, never)
    return flow.pod if flow.pod is not None and flow.error is None else f"failed: {flow.error}"
