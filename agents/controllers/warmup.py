"""Warm-ups: when a binding asks for a load the agent has not finished, start it on the
registered cache workers and fold its progress into the binding's status."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from agents import objects
from agents.observed import Observed
from agents.registry import Registry
from agents.store import Store
from fluidfed import cron, errors, tls, validation
from fluidfed.data import credentials, workers
from fluidfed.models import Binding, LoadRequest, LoadStatus

log = logging.getLogger("fluidfed.agent.warmup")

WAIT_FOR_WORKERS = 600.0  # seconds a warm-up waits for workers and runs before it fails
ON_CHANGE_INTERVAL = 60.0  # seconds between the loads of an --on-change warm-up


@dataclasses.dataclass(eq=False)
class WarmUps:
    registry: Registry
    observed: Observed
    store: Store
    _tasks: dict[str, asyncio.Task[None]] = dataclasses.field(default_factory=dict, init=False)
    _asked: dict[str, int] = dataclasses.field(default_factory=dict, init=False)
    _repeats: dict[str, bool] = dataclasses.field(default_factory=dict, init=False)
    on_change_interval: float = ON_CHANGE_INTERVAL
    data_tls: bool = True  # the workers serve HTTPS (`data_tls` in the agent file)

    def maybe_start(self, b: Binding) -> None:
        req = b.load
        if b.deleting or not objects.runs_workers(b):
            # deleted, or Fluid's own engines now (they load with Fluid's DataLoad,
            # agents.fluid): a repeating load of fluidfed's workers ends here
            self.stop(b.name)
            return
        if req is None:
            return
        repeats = bool(req.schedule or req.on_change)
        task = self._tasks.get(b.name)
        if task is not None and not task.done():
            if self._asked.get(b.name) == req.id or not self._repeats.get(b.name):
                return
            task.cancel()  # a newer ask replaces a repeating load
        elif not repeats:
            known = self.observed.load_of(b.name)
            if known is not None and known.id >= req.id and known.phase in ("Done", "Failed"):
                return
        self._asked[b.name] = req.id
        self._repeats[b.name] = repeats
        run = self._repeat(b, req) if repeats else self._run(b, req)
        self._tasks[b.name] = asyncio.create_task(run)

    async def _repeat(self, b: Binding, req: LoadRequest) -> None:
        """Fluid's Cron policy (on the schedule) and OnEvent (now, then as the under storage
        changes): each run pulls only blocks the workers lack, and blocks are keyed by the
        object's version, so what changed is what is pulled."""
        schedule = cron.parse(req.schedule) if req.schedule else None
        first = schedule is None
        while True:
            if not first:
                now = time.time()
                at = schedule.next_after(now) if schedule else now + self.on_change_interval
                when = time.strftime("%H:%M:%S UTC", time.gmtime(at))
                await self._publish(
                    b,
                    msgspec.structs.replace(
                        self.observed.load_of(b.name) or LoadStatus(id=req.id, path=req.path),
                        message=f"next load at {when}",
                    ),
                )
                await asyncio.sleep(max(0.0, at - now))
            first = False
            await self._run(b, req)

    async def _publish(self, b: Binding, prog: LoadStatus) -> None:
        self.observed.loads[b.name] = prog
        st = self.store.state.statuses.get(b.name)
        if st is not None:
            await self.store.publish(b.name, self.observed.fold(b, st))

    def stop(self, name: str) -> None:
        """Binding `name` is gone or loads otherwise: its warm-up (a repeating one never
        ends by itself) stops, and nothing of it is kept."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self._asked.pop(name, None)
        self._repeats.pop(name, None)
        self.observed.loads.pop(name, None)

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def _run(self, b: Binding, req: LoadRequest) -> None:
        prog = LoadStatus(id=req.id, path=req.path, phase="Waiting")
        self.observed.loads[b.name] = prog

        async def show(**changes: Any) -> None:
            nonlocal prog
            prog = msgspec.structs.replace(prog, **changes)
            await self._publish(b, prog)

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
            # the workers start and report loads only for their binding's agent
            creds = self.store.signing(b.name, time.time())
            urls = [w.url for w in live]
            tls_on = self.data_tls and creds.tls is not None
            if tls_on:
                # the agent's token crosses machines over TLS only: plain HTTP to a worker
                # on this machine's loopback (one run by hand beside the agent) is fine
                plain = [u for u in urls if not _encrypted_or_local(u)]
                if plain:
                    raise errors.WorkerError(
                        f"workers registered over plain HTTP from another machine while "
                        f"the binding's workers serve TLS (data_tls): {', '.join(plain)}; "
                        "give them the binding's certificate (tls_cert_file), or set "
                        'data_tls = "off" if the network encrypts'
                    )
            token = creds.token(credentials.Claims(role="agent", dataset=b.dataset))
            # https workers present the binding's certificate: only its CA is trusted
            trust_ca = tls.trusting(creds.tls.ca_cert) if tls_on and creds.tls else True
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                headers=credentials.authorization(token),
                connector=aiohttp.TCPConnector(ssl=trust_ca),
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
                        ufs_bytes=max((p.ufs_bytes for p in progress), default=0),
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


def _encrypted_or_local(url: str) -> bool:
    """Whether a worker URL keeps a token off the network in clear: https, or loopback."""
    parts = urlsplit(url)
    return parts.scheme == "https" or validation.is_loopback(parts.hostname or "")
