"""The CNI spec (1.0.0 and 1.1.0) as data: parse a runtime's request, build results and errors.

Pure: the agent's CNI server feeds it the environment and stdin the plugin forwarded.
Spec 1.1.0 adds GC (release what the runtime no longer lists: ``cni.dev/valid-attachments``)
and STATUS (can the plugin serve ADDs now); like libcni's skel, both are refused (error 1)
under a network config of an older ``cniVersion``, and neither names a container.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flock.core.model import IPAddress
from flock.errors import CniError

SUPPORTED_VERSIONS = ("1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
NETWORK_COMMANDS = ("GC", "STATUS")
"""Commands about the network, not a container: no CNI_CONTAINERID, CNI_IFNAME or CNI_NETNS."""
SINCE_VERSION = {"GC": "1.1.0", "STATUS": "1.1.0"}

# Error codes, CNI spec 1.0.0 "Error" section (100+ are plugin-specific).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # spec 1.1.0, STATUS: the plugin cannot serve ADDs now
NETWORK_STATE_DIFFERS = 100  # flock: CHECK found the pod's network not as ADD left it
NO_ADDRESS_LEFT = 101  # flock: a pod CIDR has no free address

MAX_NETWORK_CONFIG_BYTES = 1024 * 1024
"""Largest network config (stdin) accepted. A real one, prevResult included, is a few KB;
the limit keeps the plugin's forwarded request well inside its 16 MB frame even when
JSON escaping inflates it sixfold. flock-cni (cni-shim/flock-cni.c) holds its own copy."""

VALID_ATTACHMENTS = "cni.dev/valid-attachments"
VALID_ATTACHMENTS_OLD = "cni.dev/attachments"
"""The name a draft of spec 1.1 used; libcni sends both (containernetworking/cni#1101)."""
GC_GRACE_KEY = "gcGraceSeconds"
DEFAULT_GC_GRACE_SECONDS = 60.0
MAX_GC_GRACE_SECONDS = 3600.0

# The spec's rules for CNI_CONTAINERID (libcni ValidateContainerID) plus a length bound:
# the record is stored as <id>.json, and its temporary file as .<id>.json.<8 random>.tmp,
# which must fit NAME_MAX (255) - so at most 236 characters. Runtimes use 64 hex characters.
MAX_CONTAINER_ID = 200
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# CNI_IFNAME (libcni ValidateInterfaceName): at most IFNAMSIZ-1 bytes, not "." or "..",
# no "/", ":" or whitespace.
MAX_IFNAME_BYTES = 15
_IFNAME_FORBIDDEN = re.compile(r"[/:\s]")


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One entry of a GC's ``cni.dev/valid-attachments``: what the runtime's ADD named."""

    container_id: str
    ifname: str


@dataclasses.dataclass(frozen=True)
class CniRequest:
    command: str
    container_id: str
    netns: str  # "" when the runtime gave none (DEL may)
    ifname: str
    args: Mapping[str, str]
    config: Mapping[str, Any]
    cni_version: str

    valid_attachments: tuple[Attachment, ...] = ()
    """GC: the attachments the runtime still has (every other one is stale)."""
    gc_grace_seconds: float = DEFAULT_GC_GRACE_SECONDS
    """GC: an allocation whose ADD is younger than this is kept, listed or not."""

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
    """Validate a request as the runtime sent it. Raises CniError with the spec's code.

    Any input gives a CniRequest or a CniError, never another exception.
    """
    if len(stdin) > MAX_NETWORK_CONFIG_BYTES:  # characters: at most the UTF-8 byte count
        raise CniError(INVALID_CONFIG, f"network config on stdin is over {MAX_NETWORK_CONFIG_BYTES} bytes",
                       f"{len(stdin)} characters")
    try:
        config = json.loads(stdin)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to decode
        raise CniError(DECODE_FAILURE, "network config on stdin is not JSON", str(exc)[:200]) from exc
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
        raise CniError(INVALID_ENV, f"CNI_COMMAND {_shown(command)} is not one of {', '.join(COMMANDS)}")
    since = SINCE_VERSION.get(command)
    if since is not None and _version_key(version) < _version_key(since):
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} has no {command}: it came with {since}")
    if command in NETWORK_COMMANDS:
        attachments, grace = (valid_attachments(config), gc_grace(config)) if command == "GC" else ((), 0.0)
        return CniRequest(command=command, container_id="", netns="", ifname="", args={}, config=config,
                          cni_version=version, valid_attachments=attachments, gc_grace_seconds=grace)
    container_id = env.get("CNI_CONTAINERID", "")
    problem = container_id_problem(container_id)
    if problem:
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID {_shown(container_id)} {problem}")
    ifname = env.get("CNI_IFNAME", "")
    problem = ifname_problem(ifname)
    if problem:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {_shown(ifname)} {problem}")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(INVALID_ENV, f"CNI_NETNS is required for {command}")
    return CniRequest(command=command, container_id=container_id, netns=netns, ifname=ifname,
                      args=parse_cni_args(env.get("CNI_ARGS", "")), config=config, cni_version=version)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))  # only ever a supported version here


def valid_attachments(config: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """A GC's list of the attachments still valid. Raises CniError (7) unless it is a list of
    ``{containerID: str, ifname: str}``: on a list it cannot read, GC releases nothing."""
    key = VALID_ATTACHMENTS if VALID_ATTACHMENTS in config else VALID_ATTACHMENTS_OLD
    if key not in config:
        raise CniError(INVALID_CONFIG, f"GC needs the runtime's list of valid attachments ({VALID_ATTACHMENTS})")
    items = config[key]
    if not isinstance(items, list):
        raise CniError(INVALID_CONFIG, f"{key} must be a list of {{containerID, ifname}}")
    attachments = []
    for index, item in enumerate(items):
        container_id = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname", "") if isinstance(item, dict) else None
        if not isinstance(container_id, str) or not container_id or not isinstance(ifname, str):
            raise CniError(INVALID_CONFIG, f"{key}[{index}] is not {{containerID: string, ifname: string}}",
                           _shown(json.dumps(item)))
        attachments.append(Attachment(container_id, ifname))
    return tuple(attachments)


def gc_grace(config: Mapping[str, Any]) -> float:
    """The plugin config's ``gcGraceSeconds`` (0 to 3600, default 60). Raises CniError (7)."""
    value = config.get(GC_GRACE_KEY, DEFAULT_GC_GRACE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_GC_GRACE_SECONDS:
        raise CniError(INVALID_CONFIG, f"network config key {GC_GRACE_KEY!r} must be a number of seconds "
                       f"from 0 to {MAX_GC_GRACE_SECONDS:.0f}")
    return float(value)


def container_id_problem(container_id: str) -> str | None:
    """Why ``container_id`` is not a valid CNI_CONTAINERID, or None."""
    if not container_id:
        return "is missing"
    if len(container_id) > MAX_CONTAINER_ID:
        return f"is {len(container_id)} characters long, over the limit of {MAX_CONTAINER_ID}"
    if not _CONTAINER_ID.fullmatch(container_id):
        return "must be letters, digits, '_', '.' and '-', starting with a letter or digit"
    return None


def ifname_problem(ifname: str) -> str | None:
    """Why ``ifname`` is not a valid CNI_IFNAME (a Linux interface name), or None."""
    if not ifname:
        return "is missing"
    if len(ifname.encode("utf-8", "surrogatepass")) > MAX_IFNAME_BYTES:
        return f"is longer than {MAX_IFNAME_BYTES} bytes (IFNAMSIZ - 1)"
    if ifname in (".", ".."):
        return "may not be '.' or '..'"
    if _IFNAME_FORBIDDEN.search(ifname) or "\0" in ifname:
        return "may not contain '/', ':', whitespace or NUL"
    return None


def _shown(value: str) -> str:
    """A runtime-given value quoted in a message, cut short: it may be huge."""
    return repr(value) if len(value) <= 64 else repr(value[:64]) + f"... ({len(value)} chars)"


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
