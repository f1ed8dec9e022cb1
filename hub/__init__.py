"""The hub daemon: the global catalog of clusters and datasets, placement, and the API."""
