"""The agent's CNI socket: a unix socket (mode 0600, only root may drive the agent) that
flock-cni (cni-shim/flock-cni.c) connects to, one request per connection.

Wire format, both directions: a 4-byte big-endian length, then that many bytes of JSON.
Request ``{"env": {CNI_*: value}, "stdin": "<network config>"}``,
answer ``{"exitCode": int, "stdout": "<CNI result or error JSON>"}``. The work is
:meth:`flock.cniserver.CniServer.handle`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024 * 1024
"""Largest message either way, bytes. flock-cni holds its own copy (tests/unit/test_cni_shim.py)."""

Handle = Callable[[Mapping[str, str], str], Awaitable[tuple[int, str]]]
"""(CNI environment, stdin) -> (exit code, stdout)."""

REQUEST_SECONDS = 10.0
"""Longest a client may take to send its request."""


class CniSocket:
    def __init__(self, path: pathlib.Path, handle: Handle) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is created 0600: only root may drive the agent
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size > MAX_FRAME:
                    raise ValueError(f"request of {size} bytes is too large")
                request = json.loads(await reader.readexactly(size))
            if not isinstance(request, dict):
                raise ValueError("request is not a JSON object")
            env, stdin = request.get("env"), request.get("stdin")
            if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()) \
                    or not isinstance(stdin, str):
                raise ValueError("request is not {env: {name: string}, stdin: string}")
            code, stdout = await self.handle(env, stdin)
            writer.write(_frame({"exitCode": code, "stdout": stdout}))
            await writer.drain()
        except (OSError, ValueError, RecursionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            logger.warning("bad request on the CNI socket: %s", exc or type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _frame(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return len(data).to_bytes(4, "big") + data
