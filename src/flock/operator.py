"""kopf handlers of the node agent. ``handlers/agent.py`` re-exports this for ``kopf run``.

The config comes in kopf's memo from ``flock-agent`` (:mod:`flock.cli`, checked there);
under ``kopf run`` it is read once here from the file named by ``$FLOCK_CONFIG``.

Only ``@kopf.on.event`` on Pods: it writes nothing to any Pod (no annotations, no
finalizers, no status), unlike on.create/update/delete, timers and daemons. The watch is
restricted to this node at the API with a field selector.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from flock.adapters.configfile import check_host, load_config, read_passwords
from flock.adapters.kube import KubeApi
from flock.agent import Agent
from flock.core.settings import AgentConfig
from flock.errors import ConfigError, FlockError

CONFIG_ENV = "FLOCK_CONFIG"

registry = kopf.get_default_registry()


@kopf.on.startup(registry=registry)
async def start_agent(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    try:
        config: AgentConfig = memo.get("config") or _config_from_environment()
    except FlockError as exc:
        # Not retried: a bad config file stays bad. kopf stops the operator on a
        # permanent start-up failure (`kopf run` exits non-zero).
        raise kopf.PermanentError(f"flock-agent: {exc}") from None
    # Key spelling matters: ('v1', 'pods'); 'v1/pods' silently matches nothing.
    settings.watching.field_selectors[("v1", "pods")] = f"spec.nodeName={config.node_name}"
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.posting.enabled = False  # flock posts its own Events (flock.adapters.kube); no log noise
    settings.networking.request_timeout = 30
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    agent = Agent(config, KubeApi(settings))
    await agent.start()
    memo["agent"] = agent


@kopf.on.cleanup(registry=registry)
async def stop_agent(memo: kopf.Memo, **_: Any) -> None:
    agent: Agent | None = memo.get("agent")
    if agent is not None:
        await agent.stop()


@kopf.on.event("v1", "pods", registry=registry)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    agent: Agent | None = memo.get("agent")
    if agent is not None:
        agent.observe_pod(event.get("type"), event["object"])


def _config_from_environment() -> AgentConfig:
    """``kopf run``: the config file named by $FLOCK_CONFIG, checked against this host,
    with the BGP passwords read."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"set {CONFIG_ENV} to the agent's config file")
    config = load_config(path)
    check_host(config)
    return read_passwords(config)
