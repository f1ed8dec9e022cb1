"""Warm-ups: when a binding asks for a load the agent has not finished, start it on the
registered cache workers and fold its progress into the binding's status."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp
import msgspec

from agents import objects
from agents.observed import Observed
from agents.registry import Registry
from agents.store import Store
from fluidfed import errors
from fluidfed.data import credentials, workers
from fluidfed.models import Binding, LoadRequest, LoadStatus

log = logging.getLogger("fluidfed.agent.warmup")

WAIT_FOR_WORKERS = 600.0  # seconds a warm-up waits for workers and runs before it fails


@dataclasses.dataclass(eq=False)
class WarmUps:
    registry: Registry
    observed: Observed
    store: Store
    _tasks: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict, init=False)

    def maybe_start(self, b: Binding) -> None:
        req = b.load
        if req is None or b.deleting:
            return
        task = self._tasks.get(b.name)
        if task is not None and not task.done():
            return
        known = self.observed.load_of(b.name)
        if known is not None and known.id >= req.id and known.phase in ("Done", "Failed"):
            return
        self._tasks[b.name] = asyncio.create_task(self._run(b, req))

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _run(self, b: Binding, req: LoadRequest) -> None:
        prog = LoadStatus(id=req.id, path=req.path, phase="Waiting")
        self.observed.loads[b.name] = prog

        async def show(**changes: Any) -> None:
            nonlocal prog
            prog = msgspec.structs.replace(prog, **changes)
            self.observed.loads[b.name] = prog
            st = self.store.state.statuses.get(b.name)
            if st is not None:
                await self.store.publish(b.name, self.observed.fold(b, st))

        log.info("warm-up %d of %s (path %r) starting", req.id, b.dataset, req.path or "/")
        workers_set = f"StatefulSet {b.spec.namespace}/{objects.cache_name(b.spec.name)}"
        live: list[Any] = []
        try:
            async with asyncio.timeout(WAIT_FOR_WORKERS):
                while not live:
                    live = self.registry.alive(b.dataset, time.time())
                    if not live:
                        await show(
                            message=f"waiting for cache workers to register (the pods of the "
                            f"{workers_set} do once they run)"
                        )
                        await asyncio.sleep(1)
            urls = [w.url for w in live]
            # the workers start and report loads only for their binding's agent
            creds = self.store.signing(b.name, time.time())
            token = creds.token(credentials.Claims(role="agent", dataset=b.dataset))
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30), headers=credentials.authorization(token)
            ) as s:
                for u in urls:
                    await workers.start_load(s, u, req.path, urls)
                await show(phase="Running", workers=len(urls), message="")
                while True:
                    progress = [await workers.load_progress(s, u) for u in urls]
                    running = any(p.state == "running" for p in progress)
                    await show(
                        blocks=sum(p.blocks for p in progress),
                        done=sum(p.done for p in progress),
                        bytes=sum(p.bytes for p in progress),
                        errors=sum(p.errors for p in progress),
                        cached=sum(p.cached for p in progress),
                        message="; ".join(sorted({p.message for p in progress if p.message})),
                    )
                    if not running:
                        break
                    await asyncio.sleep(0.5)
            if req.path and prog.blocks == 0:
                # a directory as a reader's mount shows it (below its sub-path) is not one
                # of the dataset: say so rather than "100% of nothing"
                await show(
                    phase="Failed",
                    message=f"nothing under {req.path!r} in the dataset: paths start at the "
                    "dataset's root (a reader's mount may start below it, at its sub_path)",
                )
            else:
                await show(phase="Failed" if prog.errors else "Done")
        except (TimeoutError, errors.WorkerError) as err:
            if not live:
                why = (
                    f"no cache worker registered within {WAIT_FOR_WORKERS:.0f}s: are the pods of "
                    f"the {workers_set} running and able to reach this agent's API?"
                )
            else:
                why = str(err) or f"not finished within {WAIT_FOR_WORKERS:.0f}s"
            await show(phase="Failed", message=why)
        log.info(
            "warm-up %d of %s: %s (%.1f%% cached)", req.id, b.dataset, prog.phase, prog.percent()
        )
