"""Helpers shipped for tests and benchmarks: real daemons as child processes."""

from devkit.local.processes import AgentProcess as AgentProcess
from devkit.local.processes import HubProcess as HubProcess

__all__ = ["AgentProcess", "HubProcess"]
