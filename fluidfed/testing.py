"""Helpers shipped for tests and benchmarks: real daemons as child processes."""

from fluidfed.local.processes import AgentProcess as AgentProcess
from fluidfed.local.processes import HubProcess as HubProcess

__all__ = ["AgentProcess", "HubProcess"]
