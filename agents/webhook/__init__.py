"""The mutating admission webhook that injects the FUSE sidecar (sidecar-mode clusters)."""
