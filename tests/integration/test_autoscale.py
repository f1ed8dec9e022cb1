"""The hub's autoscaler on a real hub process: metrics an agent reports with its status
move the binding's replicas, with the reason on record; no metrics, no decision."""

import asyncio
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from devkit import testing
from devkit.testing import HubProcess, eventually
from fluidfed import Client
from fluidfed.models import (
    AutoscalePolicy,
    AutoscaleTarget,
    BindingStatus,
    CacheSpec,
    Figures,
    KubeAccess,
)
from fluidfed.units import Duration

pytestmark = pytest.mark.integration


async def test_metrics_drive_replicas_and_decisions_are_kept(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[hub]\nautoscale_interval = "200ms"\nmetrics_stale_after = "2s"\n')
    hub = HubProcess(tmp_path / "h", extra=["--config", str(cfg)]).start()
    try:
        async with Client(hub.url, hub.admin_token) as admin:
            token = (
                await admin.register_cluster(
                    testing.cluster("edge", kind="edge", kubernetes=KubeAccess(in_cluster=True))
                )
            ).token
            policy = AutoscalePolicy(
                targets=[AutoscaleTarget(metric="cache_used_ratio", target=0.5)],
                min_replicas=1,
                max_replicas=4,
                max_step=1,
                scale_up_window=Duration(0.0),
                scale_down_window=Duration(5.0),
            )
            await admin.apply_dataset(
                testing.dataset(
                    "hot", uri="s3://b/p", cache=CacheSpec(replicas=1), autoscale=policy
                )
            )
        async with Client(hub.url, token) as agent, Client(hub.url, hub.admin_token) as admin:

            async def report(used: float) -> None:
                await agent.report_status(
                    "hot.edge", BindingStatus(phase="Bound", metrics=Figures(cache_used_ratio=used))
                )

            async def replicas(want: int) -> bool:
                return (await agent.get_binding("hot.edge")).replicas == want

            async def at_least(want: int) -> bool:
                # (a report stays fresh for 2 s: decisions 0.4 s apart may take one more
                # step before this looks)
                return (await agent.get_binding("hot.edge")).replicas >= want

            async def reasons() -> list[str]:
                view = await admin.get_dataset("hot")
                return [d.reason for d in view.bindings[0].decisions]

            # the cache fills: replicas rise one step per decision up to the max
            for want in (2, 3, 4):
                await report(1.0)
                await eventually(functools.partial(at_least, want), f"{want} replicas")
            await report(1.0)
            await asyncio.sleep(0.6)
            assert await replicas(4)  # max_replicas holds

            # the load goes, then the agent falls silent: the scale-down window (5 s)
            # outlasts metrics_stale_after (2 s), so the last report goes stale before it
            # could act: no decision, nothing moves
            view = await admin.get_dataset("hot")
            made = len(view.bindings[0].decisions)
            await report(0.1)
            await asyncio.sleep(6.5)
            view = await admin.get_dataset("hot")
            assert view.bindings[0].binding.replicas == 4
            assert len(view.bindings[0].decisions) == made

            # reported again, past the window: down it comes, one step per decision (the
            # fresh report may take it further before this looks)
            await report(0.1)

            async def came_down() -> bool:
                return any(r.startswith("scale down 4 -> 3") for r in await reasons())

            await eventually(came_down, "scale-down")
            got = await reasons()
            assert got[0].startswith("scale up 1 -> 2: cache_used_ratio 1 is above 0.5")
            assert [r.split(":")[0] for r in got[:3]] == [
                "scale up 1 -> 2",
                "scale up 2 -> 3",
                "scale up 3 -> 4",
            ]
            down = got[made:]
            assert down[0].startswith("scale down 4 -> 3: cache_used_ratio 0.1 is below 0.5")
            assert (await agent.get_binding("hot.edge")).replicas <= 3

        # decisions survive a hub restart and show in describe
        hub.stop()
        hub.start()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fluidfed.cli.main",
                "--hub",
                hub.url,
                "--token",
                hub.admin_token,
                "describe",
                "dataset",
                "hot",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "Autoscaling decisions:" in out.stdout
        assert "scale up 1 -> 2" in out.stdout and "scale down 4 -> 3" in out.stdout
    finally:
        hub.stop()
