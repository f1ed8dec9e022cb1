"""The agent's unit tests name bindings the way the hub does ("<dataset>.edge"): a thin
layer over the test kit's builders."""

from devkit import testing
from fluidfed.models import Binding


def binding(
    name: str = "d.edge", generation: int = 1, *, deleting: bool = False, namespace: str = "ns"
) -> Binding:
    """A sidecar binding of dataset `<name before the dot>` on cluster edge."""
    dataset, _, cluster = name.partition(".")
    spec = testing.dataset(dataset, uri="file:///x", namespace=namespace)
    return testing.binding(spec, cluster or "edge", generation=generation, deleting=deleting)
