"""A flock-agent process for tests, and polling helpers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """``flock-agent --config FILE`` as a separate process, as the DaemonSet runs it."""

    def __init__(self, workdir: pathlib.Path, config: dict[str, Any], kubeconfig: pathlib.Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.listen = str(config.get("listen", ""))
        self.log_path = workdir / "agent.log"
        self.kubeconfig = kubeconfig
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("NODE_NAME", None)
        agent = pathlib.Path(sys.executable).with_name("flock-agent")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(agent), "--config", str(self.config_path), "--verbose"],
                                            stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def http_status(self, path: str) -> int:
        """The agent's answer to a GET of ``path`` (/healthz, /readyz): 0 when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.listen}{path}", timeout=5) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def metrics(self) -> str:
        """The agent's /metrics text."""
        with urllib.request.urlopen(f"http://{self.listen}/metrics", timeout=5) as reply:
            return str(reply.read().decode())

    def passes(self) -> int | None:
        """Reconcile passes the running agent has finished (flock_reconcile_passes_total);
        None when it does not answer."""
        try:
            text = self.metrics()
        except OSError:
            return None
        return int(sum(float(v) for v in re.findall(r"^flock_reconcile_passes_total\S* (\S+)$", text, re.M)))

    async def wait_for_passes(self, count: int, *, since: int | None = None, within: float = 60) -> int:
        """Wait until ``count`` more passes than now (or than ``since``, an earlier :meth:`passes`)
        have finished: a deterministic stand-in for "wait a while", after which whatever a pass
        would do has been done. Returns the pass count reached."""
        async def now() -> int:
            seen: int | None = await asyncio.to_thread(self.passes)
            return seen or 0

        start = await now() if since is None else since
        reached = [start]

        async def done() -> bool:
            reached[0] = await now()
            return reached[0] >= start + count
        await eventually_async(done, within=within, what=f"{count} more reconcile passes of the agent")
        return reached[0]

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to clean up (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


async def eventually(predicate: Callable[[], object], *, within: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (sync) until true; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {within}s waiting for: {what}")


async def eventually_async(predicate: Callable[[], Awaitable[bool]], *, within: float, what: str,
                           interval: float = 0.05) -> None:
    """:func:`eventually` for a coroutine predicate (one that must not block the event loop)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {within}s waiting for: {what}")
