"""One leader among the hub's replicas runs what must run once: leases turning clusters
Offline and the autoscaler (re-placement follows from what they write). On the embedded
SQLite store the one hub always leads; on a shared store the replicas campaign for a key
held with a lease (the store's `campaign`), and a leader that stops or loses its lease
stops its work at once while another takes over within about the lease's TTL. The
leader's decisions are fenced by the store: one that lost the lease cannot commit them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from fluidfed.errors import FluidfedError
from hub.store import Shared, Store

log = logging.getLogger("fluidfed.hub.leader")

Work = Callable[[], Coroutine[Any, Any, None]]


def replica_identity(port: int) -> str:
    """This replica's name in the store: host, port, pid and a nonce (a restart is new)."""
    return f"{socket.gethostname()}:{port}/{os.getpid()}/{secrets.token_hex(3)}"


class Leadership:
    def __init__(self, store: Store, identity: str) -> None:
        self.identity = identity
        self.shared = store if isinstance(store, Shared) else None
        self.leading = asyncio.Event()
        self._resigned = False  # stopping: never campaign again

    async def run(self, work: list[Work]) -> None:
        """Run `work` while this replica leads, stopped the moment it does not."""
        if self.shared is None:
            self.leading.set()
            await asyncio.gather(*(w() for w in work))
            return
        while not self._resigned:
            try:
                await self.shared.campaign(self.identity)
            except FluidfedError as err:
                log.warning("campaigning for the lead failed (%s); again in 1s", err)
                await asyncio.sleep(1.0)
                continue
            if self._resigned:  # won while stopping: hand it straight back
                await self.shared.resign()
                return
            self.leading.set()
            log.info("this hub replica (%s) leads: leases and autoscaling run here", self.identity)
            tasks = [asyncio.create_task(w()) for w in work]
            try:
                await self.shared.keep_leading()
            finally:
                self.leading.clear()
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
            if not self._resigned:
                log.warning("this hub replica (%s) lost the lead: campaigning again", self.identity)

    async def resign(self) -> None:
        """Hand the lead over now (on a clean stop), not when the lease runs out, and stop
        campaigning: a replica that is stopping must not take the lead back (its new lease
        would then hold the others off for its whole TTL)."""
        self._resigned = True
        self.leading.clear()
        if self.shared is not None:
            await self.shared.resign()
