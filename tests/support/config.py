"""The one builder of agent configs in tests: agent.yaml as a dict, and parsed.

    agent_config_data(tickSeconds=1)            # the mapping (camelCase keys, as in agent.yaml)
    agent_config(hostNetns=netns)               # the same, parsed: an AgentConfig
    process_config(tmp_path, bird, netns)       # for a flock-agent process: paths, port, its BIRD

Keyword overrides replace top-level keys; an override of None leaves the key out.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from flock.core.settings import AgentConfig, parse_config
from tests.support.agent import free_port
from tests.support.birdlab import RunningBird

NODE = "node-a"
POOLS: list[dict[str, Any]] = [{"cidr": "198.51.100.0/24"}, {"cidr": "2001:db8:100::/64"}]
POD_CIDRS = ["203.0.113.0/24", "2001:db8:200::/64"]


def agent_config_data(**overrides: Any) -> dict[str, Any]:
    """node-a with the tests' anycast pools, a fast tick and one BGP peer."""
    data: dict[str, Any] = {
        "nodeName": NODE,
        "stateDir": "/nonexistent",
        "anycastPools": [dict(pool) for pool in POOLS],
        "podCIDRs": ["192.0.2.0/26", "2001:db8::/64"],
        "tickSeconds": 0.05,
        "bird": {"routerId": "192.0.2.1", "asn": 65001,
                 "peers": [{"address": "192.0.2.254", "asn": 65000}]},
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def agent_config(**overrides: Any) -> AgentConfig:
    """:func:`agent_config_data`, parsed as the agent parses its file (no environment)."""
    return parse_config(agent_config_data(**overrides), environ={})


def bird_settings(bird: RunningBird | None, *, router_id: str, asn: int,
                  peers: Sequence[tuple[str, int]] = ()) -> dict[str, Any]:
    """The ``bird`` key: BIRD's config path and socket (when one runs), router id, ASN, peers."""
    settings: dict[str, Any] = {"routerId": router_id, "asn": asn,
                                "peers": [{"address": address, "asn": peer_asn} for address, peer_asn in peers]}
    if bird is not None:
        settings.update(configPath=str(bird.config_path), socket=str(bird.socket))
    return settings


def process_config(tmp: pathlib.Path, bird: RunningBird, netns: str, *, router_id: str = "192.0.2.2",
                   asn: int = 65101, peers: Sequence[tuple[str, int]] = (), **overrides: Any) -> dict[str, Any]:
    """agent.yaml for a flock-agent process in node netns ``netns``, beside ``bird``.

    State and CNI socket under ``tmp``, /healthz and /metrics on a free local port,
    the CNI tests' pod CIDRs and a 0.5 s tick unless ``overrides`` say otherwise.
    """
    return agent_config_data(**{
        "hostNetns": netns, "stateDir": str(tmp / "state"), "cniSocket": str(tmp / "run" / "cni.sock"),
        "podCIDRs": POD_CIDRS, "tickSeconds": 0.5, "listen": f"127.0.0.1:{free_port()}",
        "bird": bird_settings(bird, router_id=router_id, asn=asn, peers=peers),
        **overrides})
