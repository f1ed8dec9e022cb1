"""Per-cluster agents: follow the hub, keep desired state on disk, reconcile Kubernetes."""
