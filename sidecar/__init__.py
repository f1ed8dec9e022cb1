"""The FUSE sidecar that mounts a dataset in pods where CSI is unavailable."""
