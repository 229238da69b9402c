"""flock-cni, the static C shim (cni-shim/flock-cni.c), exec'd as a runtime does against a
fake agent: a unix socket in this test that records each request and sends a given answer.

It must keep the wire behaviour of the Python shim it replaced: VERSION answered
locally, CNI error codes for every input it refuses, bounded reads, the CNI_* environment
and the config forwarded verbatim, the agent's answer printed with its exit code.

Fuzzing: :func:`test_any_input_gets_the_answer_pythons_json_would_give` compares the
shim's JSON reading with Python's own (the agent's) on generated input. For a longer run
on a build that stops at any memory error or undefined behaviour::

    make -C cni-shim flock-cni-sanitized
    FLOCK_CNI_BINARY=cni-shim/flock-cni-sanitized FLOCK_CNI_EXAMPLES=20000 \\
        .venv/bin/pytest --timeout=0 tests/cni/test_shim.py -k any_input
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flock.adapters.cnisocket import MAX_FRAME
from flock.core.cnispec import (
    DECODE_FAILURE,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    MAX_NETWORK_CONFIG_BYTES,
    PLUGIN_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
)
from tests.support.cni import exec_shim, shim

LATEST = SUPPORTED_VERSIONS[-1]
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/cni-1",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=api-7;K8S_POD_UID=u1"}
MAX_DEPTH = 512  # flock-cni.c's: deeper JSON is refused as not JSON


def binary() -> pathlib.Path:
    """The build under test: the static one, or $FLOCK_CNI_BINARY (a sanitized build)."""
    given_path = os.environ.get("FLOCK_CNI_BINARY")
    return pathlib.Path(given_path).resolve() if given_path else shim()


def run(stdin: bytes | str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], bytes]:
    done = exec_shim(ENV if env is None else env, stdin, binary())
    assert done.returncode >= 0, f"flock-cni died of signal {-done.returncode}: {done.stderr!r}"
    assert not done.stderr, done.stderr  # a sanitizer's report, or anything, is a failure
    out = done.stdout
    return done.returncode, json.loads(out) if out.strip() else {}, out


def config(path: str | pathlib.Path, **extra: Any) -> str:
    return json.dumps({"cniVersion": "1.0.0", "name": "flock", "type": "flock", "socket": str(path), **extra})


Answer = Callable[[bytes], bytes]


def frame(payload: Any) -> bytes:
    data = json.dumps(payload).encode()
    return struct.pack("!I", len(data)) + data


class FakeAgent:
    """A unix socket serving one answer per connection, keeping each request's body."""

    def __init__(self, path: pathlib.Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-agent", daemon=True)
        self._thread.start()

    def request(self) -> dict[str, Any]:
        [body] = self.requests
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    header = _recv(conn, 4)
                    body = _recv(conn, struct.unpack("!I", header)[0])
                    self.requests.append(body)
                    conn.sendall(self.answer(body))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
        self.path.unlink(missing_ok=True)


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@contextlib.contextmanager
def fake_agent(tmp_path: pathlib.Path, answer: Answer | bytes) -> Iterator[FakeAgent]:
    agent = FakeAgent(tmp_path / "agent.sock", answer if callable(answer) else lambda _: answer)
    try:
        yield agent
    finally:
        agent.close()


OK = frame({"exitCode": 0, "stdout": ""})


# --- what it is ------------------------------------------------------------------------


def test_the_shim_is_a_static_executable() -> None:
    data = shim().read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF file"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    kinds = {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    assert 3 not in kinds and 2 not in kinds, "no PT_INTERP (no loader) and no PT_DYNAMIC (no shared library)"
    ldd = subprocess.run(["ldd", str(shim())], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    if shutil.which("file"):
        assert "statically linked" in subprocess.run(["file", str(shim())], capture_output=True, text=True,
                                                     check=True).stdout


def test_version_is_answered_without_the_agent() -> None:
    code, out, _ = run("{}", {"CNI_COMMAND": "VERSION"})
    assert code == 0 and out == {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- what it refuses itself --------------------------------------------------------------


def test_an_absent_agent_is_try_again_later_naming_the_socket(tmp_path: pathlib.Path) -> None:
    code, out, _ = run(config(tmp_path / "nobody.sock"))
    assert code == 1 and out["code"] == TRY_AGAIN_LATER and out["cniVersion"] == "1.0.0"
    assert f"flock-agent is not answering on {tmp_path}/nobody.sock: No such file or directory" == out["msg"]


def test_status_with_an_absent_agent_is_plugin_not_available(tmp_path: pathlib.Path) -> None:
    code, out, _ = run(config(tmp_path / "nobody.sock", cniVersion="1.1.0"), {"CNI_COMMAND": "STATUS"})
    assert code == 1 and out["code"] == PLUGIN_NOT_AVAILABLE and "nobody.sock" in out["msg"]


def test_a_config_over_the_limit_is_refused_without_asking_the_agent(tmp_path: pathlib.Path) -> None:
    with fake_agent(tmp_path, OK) as agent:
        padded = config(agent.path, pad="")
        at_limit = padded.replace('"pad": ""', '"pad": "' + "x" * (MAX_NETWORK_CONFIG_BYTES - len(padded)) + '"')
        assert len(at_limit) == MAX_NETWORK_CONFIG_BYTES
        assert run(at_limit)[0] == 0
        assert agent.request()["stdin"] == at_limit
        code, out, _ = run(at_limit + " ")
        assert len(agent.requests) == 1, "the agent was not asked"
    assert code == 1 and out["code"] == INVALID_CONFIG and "over 1048576 bytes" in out["msg"]


def test_stdin_is_read_bounded() -> None:
    with subprocess.Popen([str(binary())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd="/") as shim_:
        assert shim_.stdin and shim_.stdout
        written, chunk = 0, b" " * 65536
        with contextlib.suppress(BrokenPipeError):
            while written < 64 * MAX_NETWORK_CONFIG_BYTES:
                written += shim_.stdin.write(chunk)
        out = shim_.stdout.read()
        assert shim_.wait(timeout=30) == 1
    assert json.loads(out)["code"] == INVALID_CONFIG
    assert written < 2 * MAX_NETWORK_CONFIG_BYTES, "it stopped reading after the limit"


@pytest.mark.parametrize(("stdin", "code", "msg"), [
    (b'{"cniVersion": "1.0.0", "name": "\xff"}', DECODE_FAILURE, "not JSON"),
    (b"{not json", DECODE_FAILURE, "not JSON"),
    (b"", DECODE_FAILURE, "not JSON"),
    (b'{"a": 1} {}', DECODE_FAILURE, "not JSON"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), DECODE_FAILURE, "not JSON"),
    (b'["socket", "/run/x.sock"]', INVALID_CONFIG, "must be a JSON object"),
    (b'{"socket": 5}', INVALID_CONFIG, "'socket' must be a path"),
    (b'{"socket": ""}', INVALID_CONFIG, "'socket' must be a path"),
    (b'{"socket": "/run/\\u0000x"}', INVALID_CONFIG, "'socket' must be a path"),
    (b'{"socket": "/run/\\udc80"}', INVALID_CONFIG, "'socket' must be a path"),
    (('{"socket": "/' + "x" * 107 + '"}').encode(), INVALID_CONFIG, "'socket' must be a path"),
])
def test_input_it_cannot_forward_gets_the_specs_code(stdin: bytes, code: int, msg: str) -> None:
    exit_code, out, _ = run(stdin)
    assert exit_code == 1 and out["code"] == code and msg in out["msg"], out


def test_a_closed_stdin_is_an_io_failure() -> None:
    done = subprocess.run([str(binary())], stdin=subprocess.DEVNULL, capture_output=True, env=ENV, check=False,
                          preexec_fn=lambda: os.close(0))
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == IO_FAILURE


def test_errors_carry_the_configs_cni_version_when_it_has_one(tmp_path: pathlib.Path) -> None:
    assert run(config(tmp_path / "x.sock", cniVersion="1.1.0"))[1]["cniVersion"] == "1.1.0"
    assert run(config(tmp_path / "x.sock", cniVersion=7))[1]["cniVersion"] == LATEST
    assert run(config(tmp_path / "x.sock", cniVersion="v" * 65))[1]["cniVersion"] == LATEST


# --- what it forwards and prints ---------------------------------------------------------


def test_the_request_carries_the_cni_environment_and_the_config_verbatim(tmp_path: pathlib.Path) -> None:
    with fake_agent(tmp_path, OK) as agent:
        text = config(agent.path, note="é \u2028 \t\n\x7f 🐑", nested={"socket": "/elsewhere"})
        env = {k.encode(): v.encode() for k, v in ENV.items()}
        env[b"CNI_ARGS"] = b"K8S_POD_NAME=\xff\xfeodd"  # not UTF-8: Python's surrogateescape, as before
        env[b"NOT_CNI"] = b"1"
        done = subprocess.run([str(binary())], input=text.encode(), capture_output=True, env=env, check=False)
        assert done.returncode == 0, done.stdout
        request = agent.request()
    assert request["stdin"] == text
    assert request["env"] == {**ENV, "CNI_ARGS": os.fsdecode(b"K8S_POD_NAME=\xff\xfeodd")}


def test_the_agents_answer_is_printed_with_its_exit_code(tmp_path: pathlib.Path) -> None:
    result = json.dumps({"cniVersion": "1.0.0", "ips": [{"address": "203.0.113.5/32"}], "note": "é\n"})
    with fake_agent(tmp_path, frame({"exitCode": 3, "stdout": result})) as agent:
        code, _, out = run(config(agent.path))
    assert code == 3 and out == result.encode() + b"\n"
    with fake_agent(tmp_path, frame({"exitCode": 0, "stdout": ""})) as agent:
        assert run(config(agent.path))[::2] == (0, b"")


@pytest.mark.parametrize(("answer", "code"), [
    (b"", TRY_AGAIN_LATER),  # closed without a word
    (struct.pack("!I", 10) + b"{}", TRY_AGAIN_LATER),  # closed mid-message
    (struct.pack("!I", MAX_FRAME + 1), TRY_AGAIN_LATER),
    (struct.pack("!I", 5) + b"nope!", TRY_AGAIN_LATER),
    (frame([0, ""]), TRY_AGAIN_LATER),
    (frame({"stdout": ""}), IO_FAILURE),
    (frame({"exitCode": "0", "stdout": ""}), IO_FAILURE),
    (frame({"exitCode": 0.0, "stdout": ""}), IO_FAILURE),
    (frame({"exitCode": 256, "stdout": ""}), IO_FAILURE),
    (frame({"exitCode": -1, "stdout": ""}), IO_FAILURE),
    (frame({"exitCode": 0}), IO_FAILURE),
    (frame({"exitCode": 0, "stdout": None}), IO_FAILURE),
])
def test_a_malformed_answer_is_an_error_result(tmp_path: pathlib.Path, answer: bytes, code: int) -> None:
    with fake_agent(tmp_path, answer) as agent:
        exit_code, out, _ = run(config(agent.path))
    assert exit_code == 1 and out["code"] == code, out


def test_the_shim_waits_for_a_slow_agent(tmp_path: pathlib.Path) -> None:
    # A busy agent may take long (the shim waits up to 120 s, as the Python shim did).
    def slowly(_: bytes) -> bytes:
        time.sleep(3)
        return frame({"exitCode": 0, "stdout": "{}"})

    with fake_agent(tmp_path, slowly) as agent:
        started = time.monotonic()
        code, out, _ = run(config(agent.path))
    assert (code, out) == (0, {}) and time.monotonic() - started >= 2.5


# --- fuzzing: the shim reads JSON as Python (the agent) does ------------------------------


FUZZ_SOCKET = "/tmp/flock-shim-fuzz.sock"  # fixed: generated configs name it
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def escaped(draw: st.DrawFn, text: str) -> str:
    """``text`` as a JSON string token, each character maybe written as a \\u escape."""
    out = []
    for char in text:
        plain = json.dumps(char, ensure_ascii=False)[1:-1]
        out.append(draw(st.sampled_from([plain, json.dumps(char)[1:-1]])))
    return '"' + "".join(out) + '"'


@st.composite
def configs(draw: st.DrawFn) -> bytes:
    """Network configs as text, their keys and values spelt in every way JSON allows,
    then maybe broken by a byte."""
    members = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    socket_value: Any = draw(st.one_of(st.just(FUZZ_SOCKET), st.text(max_size=12), json_values))
    items = [*members.items(), ("socket", socket_value)]
    if draw(st.booleans()):
        items.append(("cniVersion", draw(st.one_of(st.sampled_from(SUPPORTED_VERSIONS), json_values))))
    items = draw(st.permutations(items))
    parts = []
    for key, value in items:
        value_text = draw(escaped(value)) if isinstance(value, str) else json.dumps(value)
        parts.append(f"{draw(escaped(key))}{draw(st.sampled_from(['', ' ', chr(10)]))}:{value_text}")
    data = ("{" + ", ".join(parts) + "}").encode()
    if draw(st.booleans()):  # one byte replaced, inserted or removed
        at = draw(st.integers(0, len(data)))
        new = bytes([draw(st.integers(0, 255))])
        data = draw(st.sampled_from([data[:at] + new + data[at + 1:], data[:at] + new + data[at:],
                                     data[:at] + data[at + 1:]]))
    return data


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def text_ok(value: object, most: int) -> bool:
    """Whether flock-cni takes ``value`` as a string of 1 to ``most`` bytes (the socket's
    path) or 0 to ``most`` (the cniVersion of its error results)."""
    try:
        size = len(value.encode()) if isinstance(value, str) else -1
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return isinstance(value, str) and 0 <= size <= most and "\0" not in value


@pytest.fixture(scope="module")
def fuzz_agent() -> Iterator[FakeAgent]:
    path = pathlib.Path(FUZZ_SOCKET)
    path.unlink(missing_ok=True)
    agent = FakeAgent(path, lambda _: frame({"exitCode": 0, "stdout": '{"ok": 1}'}))
    try:
        yield agent
    finally:
        agent.close()
        path.unlink(missing_ok=True)


@settings(max_examples=int(os.environ.get("FLOCK_CNI_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(st.one_of(configs(), st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 700).map(lambda d: b"[" * d + b"]" * d)))
def test_any_input_gets_the_answer_pythons_json_would_give(fuzz_agent: FakeAgent, data: bytes) -> None:
    try:
        parsed: Any = json.loads(data.decode("utf-8"))
        valid = depth(parsed) <= MAX_DEPTH
    except (ValueError, RecursionError):
        valid = False
    is_object = valid and isinstance(parsed, dict)
    socket_value = parsed.get("socket") if is_object else None
    socket_ok = text_ok(socket_value, 107) and socket_value != ""
    # Never let a generated config send the shim to the real default socket, or anywhere real
    # (a relative path without "/" names a file in /, where no socket lives).
    assume(not is_object or "socket" in parsed)
    assume(not socket_ok or socket_value == FUZZ_SOCKET or "/" not in str(socket_value))
    fuzz_agent.requests.clear()
    code, out, raw = run(data)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
    if not valid:
        assert (code, out["code"]) == (1, DECODE_FAILURE), out
        return
    version = parsed.get("cniVersion") if is_object else None
    if code == 1:
        assert out["cniVersion"] == (version if text_ok(version, 64) else LATEST)
    if not is_object:
        assert out["code"] == INVALID_CONFIG and "JSON object" in out["msg"]
    elif not socket_ok:
        assert out["code"] == INVALID_CONFIG and "'socket'" in out["msg"]
    elif socket_value == FUZZ_SOCKET:
        assert (code, out) == (0, {"ok": 1})
        assert fuzz_agent.request()["stdin"] == data.decode()
    else:
        assert out["code"] == TRY_AGAIN_LATER and socket_value in out["msg"]


def test_a_huge_cni_environment_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    # One variable is at most 128 KiB (MAX_ARG_STRLEN), all of them a quarter of the stack
    # limit: raised here, so that 30 variables of \x01 (6 bytes escaped) pass the 16 MiB frame.
    big = {f"CNI_X{i}": "\x01" * 100_000 for i in range(30)}

    def roomy_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (64 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    with fake_agent(tmp_path, OK) as agent:
        done = subprocess.run([str(binary())], input=config(agent.path).encode(), capture_output=True,
                              env={**ENV, **big}, check=False, preexec_fn=roomy_stack)
        assert agent.requests == []
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["code"] == INVALID_ENV and "environment" in out["msg"]
