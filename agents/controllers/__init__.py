"""The agent's controllers, each one task over the shared pieces (agents.queue,
agents.live, agents.store, agents.informer); agents.agent wires them."""
