"""The agent's config file and the host it points at: read, parse, check.

The parsing and validation are pure (:func:`flock.core.settings.parse_config`); this
module reads the YAML file, checks that the paths the config names exist here, and reads
the peers' TCP-MD5 password files (:func:`read_passwords`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

import yaml

from flock.adapters.netns import named as named_netns
from flock.core.fabric import password_problem
from flock.core.settings import AgentConfig, BgpPeer, parse_config
from flock.errors import ConfigError


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a YAML config file (``environ``: default os.environ, for $NODE_NAME).

    Raises ConfigError, also for an unreadable file.
    """
    try:
        text = pathlib.Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    return parse_config(data, os.environ if environ is None else environ)


def check_host(config: AgentConfig) -> None:
    """What the config points at on this host must exist. Raises ConfigError."""
    if not os.path.isdir(os.path.join(config.proc_path, "sys", "net", "ipv4")):
        raise ConfigError(f"procPath: {config.proc_path}/sys/net/ipv4 does not exist "
                          f"(in a container, is the host's /proc mounted at {config.proc_path}?)")
    if config.host_netns is not None and not os.path.exists(named_netns(config.host_netns)):
        raise ConfigError(f"hostNetns: no network namespace named {config.host_netns!r} "
                          f"({named_netns(config.host_netns)})")


def read_passwords(config: AgentConfig) -> AgentConfig:
    """``config`` with every peer's ``passwordFile`` read into its ``password``.

    One trailing newline is dropped (``echo pw > file``, ``kubectl create secret
    --from-file``). Raises ConfigError naming the peer's key and the file, never the
    password: an unreadable or empty file, or a password BIRD cannot take
    (:func:`flock.core.fabric.password_problem`).
    """
    peers = tuple(_with_password(peer, f"bird.peers[{i}].passwordFile") for i, peer in enumerate(config.bird.peers))
    return dataclasses.replace(config, bird=dataclasses.replace(config.bird, peers=peers))


def _with_password(peer: BgpPeer, where: str) -> BgpPeer:
    if peer.password_file is None:
        return peer
    path = peer.password_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {path} (peer {peer.address}): cannot read it: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} (peer {peer.address}) is not UTF-8 text") from None
    text = text.removesuffix("\n")
    problem = password_problem(text)
    if problem is not None:
        raise ConfigError(f"{where}: {path} (peer {peer.address}): {problem}")
    return dataclasses.replace(peer, password=text)
