"""Typed builders shared by the agent's unit tests."""

from fluidfed.models import Binding, Dataset, Mount


def binding(
    name: str = "d.edge", generation: int = 1, *, deleting: bool = False, namespace: str = "ns"
) -> Binding:
    """A sidecar binding of dataset `<name before the dot>` on cluster edge."""
    dataset = name.split(".")[0]
    return Binding(
        name=name,
        dataset=dataset,
        cluster="edge",
        mode="sidecar",
        replicas=1,
        generation=generation,
        spec=Dataset(name=dataset, namespace=namespace, mounts=[Mount(uri="file:///x")]),
        deleting=deleting,
    )
