"""Entry module for ``kopf run --standalone handlers/agent.py`` (set FLOCK_CONFIG=FILE).

Importing flock.operator registers the agent's handlers with kopf; nothing else lives here.
"""

from flock.operator import pod_event, start_agent, stop_agent

__all__ = ["pod_event", "start_agent", "stop_agent"]
