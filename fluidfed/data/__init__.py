"""The data-plane library shared by the FUSE sidecar and the cache worker: block keys and
rendezvous, the block file format, the tiered store, the dataset layout, the under-storage
readers, the worker protocol, heap tuning and the data-path instruments."""
