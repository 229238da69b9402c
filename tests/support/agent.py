"""A flock-agent process for tests, and polling helpers."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
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


async def eventually(predicate: Any, *, within: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` (sync) until true; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    pytest.fail(f"timed out after {within}s waiting for: {what}")
