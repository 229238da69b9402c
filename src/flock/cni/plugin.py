#!/usr/bin/env python3
"""flock-cni: the CNI plugin executable (CNI spec 1.0.0).

A thin shim: it forwards the runtime's request (the CNI_* environment and the network
config from stdin) to flock-agent over the agent's unix socket (network config key
``socket``) and prints the agent's answer. The agent does the work, serialized with
its reconcile state.

This file must run on a node from a CNI bin dir with a bare environment and no venv:
it uses only the Python standard library and imports nothing from flock.
``flock-cni-install`` copies it there. VERSION is answered here, without the agent.

Wire format, both directions: a 4-byte big-endian length, then that many bytes of
JSON. Request: {"env": {CNI_*: value}, "stdin": "<network config>"}.
Answer: {"exitCode": int, "stdout": "<CNI result or error JSON>"}.
"""

import json
import os
import socket
import struct
import sys
from typing import BinaryIO

# Copies of flock.core.cnispec's values (this file imports nothing of flock);
# tests/unit/test_cni_plugin_copies.py keeps them equal.
SUPPORTED_VERSIONS = ("1.0.0",)
DEFAULT_SOCKET = "/run/flock/cni.sock"
CONNECT_SECONDS = 5.0
ANSWER_SECONDS = 120.0  # a busy node may queue many ADDs; the runtime has its own limit
MAX_FRAME = 16 * 1024 * 1024
MAX_NETWORK_CONFIG_BYTES = 1024 * 1024  # = flock.core.cnispec.MAX_NETWORK_CONFIG_BYTES

# CNI spec error codes, named as in flock.core.cnispec
INCOMPATIBLE_VERSION = 1
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11

_HEADER = struct.Struct("!I")


def encode_frame(payload: dict) -> bytes:  # type: ignore[type-arg]
    data = json.dumps(payload).encode()
    return _HEADER.pack(len(data)) + data


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> dict:  # type: ignore[type-arg]
    (size,) = _HEADER.unpack(recv_exactly(sock, _HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"message of {size} bytes is too large")
    return decode_payload(recv_exactly(sock, size))


def decode_payload(data: bytes) -> dict:  # type: ignore[type-arg]
    """A frame's body as a JSON object. Raises ValueError only, whatever the bytes."""
    try:
        result = json.loads(data)
    except RecursionError as exc:  # nested too deep
        raise ValueError("message is nested too deeply") from exc
    if not isinstance(result, dict):
        raise ValueError("message is not a JSON object")
    return result


def error_json(version: str, code: int, msg: str, details: str = "") -> str:
    return json.dumps({"cniVersion": version, "code": code, "msg": msg, "details": details})


def _config_version(config: object) -> str:
    if isinstance(config, dict) and isinstance(config.get("cniVersion"), str):
        return str(config["cniVersion"])
    return SUPPORTED_VERSIONS[-1]


def read_stdin(stream: BinaryIO) -> bytes | None:
    """The network config from ``stream``, read bounded: None when it is over the limit."""
    data = stream.read(MAX_NETWORK_CONFIG_BYTES + 1)
    return None if len(data) > MAX_NETWORK_CONFIG_BYTES else data


def run(env: dict, stdin: str | bytes | None) -> tuple[int, str]:  # type: ignore[type-arg]
    """One plugin invocation: (exit code, stdout). ``stdin`` None: it was over the limit."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, json.dumps({"cniVersion": SUPPORTED_VERSIONS[-1], "supportedVersions": list(SUPPORTED_VERSIONS)})
    if stdin is None or len(stdin) > MAX_NETWORK_CONFIG_BYTES:
        # Permanent, and told apart from "not JSON": the config may be well-formed, it is
        # just larger than any network config flock accepts. The agent is not asked.
        return 1, error_json(SUPPORTED_VERSIONS[-1], INVALID_CONFIG,
                             f"network config on stdin is over {MAX_NETWORK_CONFIG_BYTES} bytes")
    try:
        if isinstance(stdin, bytes):
            stdin = stdin.decode("utf-8")  # UnicodeDecodeError is a ValueError
        config = json.loads(stdin)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to decode
        return 1, error_json(SUPPORTED_VERSIONS[-1], DECODE_FAILURE, "network config on stdin is not JSON",
                             str(exc)[:200])
    version = _config_version(config)
    if not isinstance(config, dict):
        return 1, error_json(version, INVALID_CONFIG, "network config must be a JSON object")
    path = config.get("socket", DEFAULT_SOCKET)
    if not isinstance(path, str) or not path:
        return 1, error_json(version, INVALID_CONFIG, "network config key 'socket' must be a path")

    request = {"env": {k: v for k, v in env.items() if k.startswith("CNI_")}, "stdin": stdin}
    frame = encode_frame(request)
    if len(frame) > _HEADER.size + MAX_FRAME:  # only a huge environment gets here: stdin is bounded
        return 1, error_json(version, INVALID_ENV, f"the CNI_* environment is over {MAX_FRAME} bytes")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_SECONDS)
            sock.connect(path)
            sock.settimeout(ANSWER_SECONDS)
            sock.sendall(frame)
            answer = recv_frame(sock)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return 1, error_json(version, TRY_AGAIN_LATER, f"flock-agent is not answering on {path}: {reason}",
                             "is the flock agent running on this node? the runtime will retry")
    code, stdout = answer.get("exitCode"), answer.get("stdout")
    if not isinstance(code, int) or not isinstance(stdout, str):
        return 1, error_json(version, IO_FAILURE, "flock-agent sent a malformed answer")
    return code, stdout


def main() -> int:
    code, stdout = run(dict(os.environ), read_stdin(sys.stdin.buffer))
    sys.stdout.write(stdout)
    if stdout and not stdout.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
