"""Local Kubernetes clusters for the tests and the demo (real control plane, kwok nodes)."""
