"""End-to-end helpers are shared with other test packages: see tests/support/agent.py."""

from tests.support.agent import AgentProcess, eventually, free_port

__all__ = ["AgentProcess", "eventually", "free_port"]
