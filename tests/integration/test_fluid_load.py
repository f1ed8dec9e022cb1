"""`fluidfed dataset load` on a cluster with Fluid: the agent writes Fluid's DataLoad
(checked by Fluid's real CRD in a real kube-apiserver) and reads its progress back to the
hub, which the CLI shows; a schedule is Fluid's Cron policy. Fluid's controller is not
running here: the test writes the DataLoad's status as Fluid's controller does."""

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio import client

from devkit.testing import eventually
from fluidfed import names
from fluidfed.models import Access, CacheSpec, Mount, Placement
from tests.integration.conftest import Fleet, cli, dataset

pytestmark = pytest.mark.integration

FLUID = (names.FLUID_GROUP, names.FLUID_VERSION)


async def test_a_load_on_fluid_is_fluids_dataload_and_its_progress_comes_back(
    fleet: Fleet, apis: dict[str, Any]
) -> None:
    name, home = "fload", "fload-home"
    spec = dataset(
        name,
        mounts=[
            Mount(uri="s3://bucket/data", options={"endpoint": "http://minio:9000"}, secret="s3")
        ],
        placement=Placement(clusters=["standard"]),
        access=[Access(namespace=home)],
        cache=CacheSpec(engine="alluxio"),
    )
    async with fleet.admin() as hub:
        await hub.apply_dataset(spec)
    custom = client.CustomObjectsApi(apis["standard"])

    async def dataloads() -> list[dict[str, Any]]:
        try:
            got = await custom.list_namespaced_custom_object(*FLUID, home, "dataloads")
        except client.ApiException:
            return []
        return list(got["items"])

    asked = asyncio.create_task(
        asyncio.to_thread(cli, fleet.hub, "dataset", "load", name, "--path", "train", timeout=120)
    )
    (load,) = await eventually(dataloads, "Fluid's DataLoad in the home namespace")
    assert load["spec"]["dataset"] == {"name": name, "namespace": home}
    assert load["spec"]["target"] == [{"path": "/train"}]
    assert load["spec"]["policy"] == "Once" and load["spec"]["loadMetadata"] is True
    # Fluid's controller runs the load and says so
    await custom.patch_namespaced_custom_object_status(  # type: ignore[call-arg]
        *FLUID, home, "dataloads", load["metadata"]["name"],
        {"status": {"phase": "Complete", "duration": "4s", "conditions": [
            {"type": "Complete", "status": "True", "message": "DataLoad is complete"}]}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    r = await asked
    assert r.returncode == 0, r.stdout + r.stderr
    assert "standard: Done - DataLoad is complete" in r.stdout

    # Fluid's Cron policy; the one-off load is done with and goes
    r = cli(fleet.hub, "dataset", "load", name, "--schedule", "0 */6 * * *")
    assert r.returncode == 0, r.stderr
    assert "on schedule '0 */6 * * *', first at" in r.stdout

    async def cron_only() -> Any:
        got = await dataloads()
        return got if [d["spec"].get("policy") for d in got] == ["Cron"] else None

    (cron,) = await eventually(cron_only, "the Cron DataLoad in place of the one-off")
    assert cron["spec"]["schedule"] == "0 */6 * * *" and "target" not in cron["spec"]
