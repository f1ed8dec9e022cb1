"""Declare a dataset with the Python SDK and watch it reach a cluster.

    FLUIDFED_HUB=https://127.0.0.1:8470 FLUIDFED_TOKEN=... FLUIDFED_CA_FILE=ca.crt \\
        python examples/declare_and_watch.py

Registers a cluster `example-edge` (an edge cluster reached in-cluster), declares the dataset
`example-imagenet` placed on edge clusters, then follows that cluster's bindings the way
its agent would, from the revision the declaration returned, until the binding arrives.
"""

from __future__ import annotations

import asyncio
import os

import fluidfed


async def main() -> None:
    hub_url = os.environ.get("FLUIDFED_HUB", "http://127.0.0.1:8470")
    token = os.environ["FLUIDFED_TOKEN"]
    ca_file = os.environ.get("FLUIDFED_CA_FILE", "")
    async with fluidfed.Client(hub_url, token, ca_file=ca_file) as hub:
        cluster = fluidfed.Cluster(
            name="example-edge",
            kind="edge",
            # its pods mount datasets through the FUSE sidecar, which runs privileged
            capabilities=fluidfed.Capabilities(privileged=True),
            kubernetes=fluidfed.KubeAccess(in_cluster=True),
        )
        await hub.register_cluster(cluster)
        dataset = fluidfed.Dataset(
            name="example-imagenet",
            mounts=[fluidfed.Mount(uri="s3://datasets/imagenet", options={"region": "us-east-1"})],
            placement=fluidfed.Placement(kinds=["edge"]),
        )
        view = await hub.apply_dataset(dataset)
        print(f"declared {dataset.name} (generation {view.generation})")
        listed = await hub.list_bindings(cluster.name)
        for b in listed.items:
            print(f"binding {b.name}: {b.mode}, {b.replicas} replicas")
        if any(b.dataset == dataset.name for b in listed.items):
            return
        async for event in hub.watch_bindings(cluster.name, revision=listed.revision):
            if event.object is not None and event.object.dataset == dataset.name:
                print(f"binding {event.object.name}: {event.type}")
                return


if __name__ == "__main__":
    asyncio.run(main())
