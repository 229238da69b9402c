"""The agent's config file and the host it points at: read, parse, check.

The parsing and validation are pure (:func:`flock.core.settings.parse_config`); this
module reads the YAML file and checks that the paths the config names exist here.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import yaml

from flock.adapters.netns import named as named_netns
from flock.core.settings import AgentConfig, parse_config
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
