"""The CNI spec 1.0.0 as data: parse a runtime's request, build results and errors.

Pure: the agent's CNI server feeds it the environment and stdin the plugin forwarded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flock.model import IPAddress

SUPPORTED_VERSIONS = ("1.0.0",)
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Error codes, CNI spec 1.0.0 "Error" section (100+ are plugin-specific).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NETWORK_STATE_DIFFERS = 100  # flock: CHECK found the pod's network not as ADD left it
NO_ADDRESS_LEFT = 101  # flock: a pod CIDR has no free address

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


class CniError(Exception):
    """A CNI error result: code, message for a person, optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


@dataclasses.dataclass(frozen=True)
class CniRequest:
    command: str
    container_id: str
    netns: str  # "" when the runtime gave none (DEL may)
    ifname: str
    args: Mapping[str, str]
    config: Mapping[str, Any]
    cni_version: str

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` (CNI_ARGS) into a dict; malformed pairs raise CniError."""
    result: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        result[key] = value
    return result


def parse_request(env: Mapping[str, str], stdin: str) -> CniRequest:
    """Validate a request as the runtime sent it. Raises CniError with the spec's code."""
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, "network config on stdin is not JSON", str(exc)) from exc
    if not isinstance(config, dict):
        raise CniError(INVALID_CONFIG, "network config must be a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported by flock",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config.get(key):
            raise CniError(INVALID_CONFIG, f"network config has no {key!r}")

    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    container_id = env.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {container_id!r} is missing or not a valid id")
    ifname = env.get("CNI_IFNAME", "")
    if not _IFNAME.match(ifname):
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} is missing or not a valid interface name")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(INVALID_ENV, f"CNI_NETNS is required for {command}")
    return CniRequest(command=command, container_id=container_id, netns=netns, ifname=ifname,
                      args=parse_cni_args(env.get("CNI_ARGS", "")), config=config, cni_version=version)


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    sandbox: str = ""


def add_result(*, cni_version: str, host: Interface, pod: Interface, pod_ips: Sequence[IPAddress],
               gateways: Mapping[int, IPAddress]) -> dict[str, Any]:
    """The ADD result: interfaces (host veth, pod side with sandbox), ips and default routes."""
    return {
        "cniVersion": cni_version,
        "interfaces": [
            {"name": host.name, "mac": host.mac},
            {"name": pod.name, "mac": pod.mac, "sandbox": pod.sandbox},
        ],
        "ips": [
            {"address": f"{ip}/{ip.max_prefixlen}", "gateway": str(gateways[ip.version]), "interface": 1}
            for ip in pod_ips
        ],
        "routes": [
            {"dst": "0.0.0.0/0" if ip.version == 4 else "::/0", "gw": str(gateways[ip.version])}
            for ip in pod_ips
        ],
        "dns": {},
    }


def error_result(cni_version: str, error: CniError) -> dict[str, Any]:
    return {"cniVersion": cni_version, "code": error.code, "msg": error.msg, "details": error.details}
