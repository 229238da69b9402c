"""flock-cni imports nothing of flock, so it holds copies of the CNI spec's values that
flock.core.cnispec defines for the agent: they must stay equal."""

from __future__ import annotations

import pytest

from flock.cni import plugin
from flock.core import cnispec


@pytest.mark.parametrize("name", ["INCOMPATIBLE_VERSION", "INVALID_ENV", "IO_FAILURE", "DECODE_FAILURE",
                                  "INVALID_CONFIG", "TRY_AGAIN_LATER"])
def test_the_plugins_error_codes_are_the_specs(name: str) -> None:
    assert getattr(plugin, name) == getattr(cnispec, name)


def test_the_plugin_supports_the_versions_the_agent_does() -> None:
    assert plugin.SUPPORTED_VERSIONS == cnispec.SUPPORTED_VERSIONS


def test_the_plugin_refuses_network_configs_above_the_agents_limit() -> None:
    assert plugin.MAX_NETWORK_CONFIG_BYTES == cnispec.MAX_NETWORK_CONFIG_BYTES
