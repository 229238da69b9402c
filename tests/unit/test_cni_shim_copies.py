"""flock-cni is C (cni-shim/flock-cni.c), so it holds copies of values the agent's Python
defines (flock.core.cnispec, flock.adapters.cnisocket, flock.cni.install): they must
stay equal. Read from the source here; tests/cni/test_shim.py checks the built
executable's behaviour with them."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from flock.adapters import cnisocket
from flock.cni import install
from flock.core import cnispec

SOURCE = (pathlib.Path(__file__).resolve().parents[2] / "cni-shim" / "flock-cni.c").read_text()


def define(name: str) -> str:
    match = re.search(rf"^#define {name} (.+?)(?:\s*/\*.*)?$", SOURCE, re.MULTILINE)
    assert match, f"flock-cni.c defines no {name}"
    return match.group(1).strip()


def integer(name: str) -> int:
    text = define(name)
    assert re.fullmatch(r"\(?[0-9 *]+\)?", text), f"{name} = {text} is not a plain product"
    value = 1
    for factor in re.findall(r"[0-9]+", text):
        value *= int(factor)
    return value


def error_codes() -> dict[str, int]:
    match = re.search(r"enum \{([^}]*)\};", SOURCE)
    assert match, "flock-cni.c has no enum of error codes"
    return {name: int(value) for name, value in re.findall(r"([A-Z_]+) = ([0-9]+)", match.group(1))}


@pytest.mark.parametrize("name", ["INVALID_ENV", "IO_FAILURE", "DECODE_FAILURE", "INVALID_CONFIG",
                                  "TRY_AGAIN_LATER", "PLUGIN_NOT_AVAILABLE"])
def test_the_shims_error_codes_are_the_specs(name: str) -> None:
    assert error_codes()[name] == getattr(cnispec, name)


def test_the_shim_supports_the_versions_the_agent_does() -> None:
    answer = json.loads(json.loads(define("VERSION_ANSWER")))  # a C string literal holding JSON
    assert answer["supportedVersions"] == list(cnispec.SUPPORTED_VERSIONS)
    assert answer["cniVersion"] == json.loads(define("LATEST_VERSION")) == cnispec.SUPPORTED_VERSIONS[-1]


def test_the_shim_refuses_network_configs_above_the_agents_limit() -> None:
    assert integer("MAX_NETWORK_CONFIG_BYTES") == cnispec.MAX_NETWORK_CONFIG_BYTES


def test_the_shims_frames_are_the_sockets() -> None:
    assert integer("MAX_FRAME") == cnisocket.MAX_FRAME
    # The config, escaped (at most sixfold) and with a CNI environment, fits one frame.
    assert 6 * cnispec.MAX_NETWORK_CONFIG_BYTES + 64 * 1024 < cnisocket.MAX_FRAME


def test_the_shims_default_socket_is_the_installers() -> None:
    assert json.loads(define("DEFAULT_SOCKET")) == install.DEFAULT_SOCKET
