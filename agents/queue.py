"""The agent's work queue: binding names to reconcile, each at most once at a time.

A name added while it waits is not added twice; a name added while a worker reconciles it
is queued again when that worker is done (so two workers never reconcile one binding at
once, and no change seen meanwhile is lost). A name whose reconcile failed with a temporary
error comes back after an exponential delay that grows with each failure in a row and is
forgotten on the first success.
"""

from __future__ import annotations

import asyncio

from fluidfed.backoff import Backoff


class WorkQueue:
    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._waiting: set[str] = set()  # in _ready, not taken yet
        self._active: set[str] = set()  # taken by a worker, not done yet
        self._again: set[str] = set()  # added while active: queue when done
        self._failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}

    def add(self, name: str) -> None:
        if name in self._active:
            self._again.add(name)
        elif name not in self._waiting:
            self._waiting.add(name)
            self._ready.put_nowait(name)

    async def get(self) -> str:
        name = await self._ready.get()
        self._waiting.discard(name)
        self._active.add(name)
        return name

    def done(self, name: str) -> None:
        """The worker that took `name` has finished with it."""
        self._active.discard(name)
        self._ready.task_done()
        if name in self._again:
            self._again.discard(name)
            self.add(name)

    def retry_later(self, name: str) -> float:
        """Queue `name` again after the delay its failures in a row have earned; returns it."""
        failures = self._failures.get(name, 0)
        self._failures[name] = failures + 1
        delay = self.backoff.bound(failures)
        if name not in self._retries:
            self._retries[name] = asyncio.get_running_loop().call_later(delay, self._retry, name)
        return delay

    def forget(self, name: str) -> None:
        """`name` was reconciled: its next failure starts from the shortest delay again."""
        self._failures.pop(name, None)

    def failures(self, name: str) -> int:
        return self._failures.get(name, 0)

    def pending(self) -> frozenset[str]:
        """Names queued or being reconciled (waiting retries not counted)."""
        return frozenset(self._waiting | self._active | self._again)

    def empty(self) -> bool:
        return not self.pending()

    def close(self) -> None:
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()

    def _retry(self, name: str) -> None:
        del self._retries[name]
        self.add(name)
