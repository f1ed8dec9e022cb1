"""One list-then-watch generator, for the hub's bindings and for every Kubernetes kind.

    async for event in informer.list_then_watch(source, backoff, version=...):
        Listed    a full snapshot (first, and after a relist)
        Added / Modified / Deleted / Bookmark   changes after the snapshot
        Relisting the version is too old (410 Gone): a snapshot follows
        Retrying  an error; the generator sleeps `delay` after the consumer has seen it

Without a version it lists first; with one it resumes watching from there. A watch that
ends cleanly resumes from the last event's version at once (and the delays start over);
an error waits the next of the backoff's delays. A consumer that stops at Retrying (the
kind is not served, say) never sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fluidfed.backoff import Backoff

T = TypeVar("T")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Listed(Generic[T, V]):
    items: list[T]
    version: V


@dataclass(frozen=True, slots=True)
class ObjectEvent(Generic[T, V]):
    obj: T
    version: V


class Added(ObjectEvent[T, V]):
    __slots__ = ()


class Modified(ObjectEvent[T, V]):
    __slots__ = ()


class Deleted(ObjectEvent[T, V]):
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Bookmark(Generic[V]):
    version: V


@dataclass(frozen=True, slots=True)
class Relisting(Generic[V]):
    too_old: V | None


@dataclass(frozen=True, slots=True)
class Retrying:
    error: Exception
    delay: float


Change = Added[T, V] | Modified[T, V] | Deleted[T, V] | Bookmark[V]
Event = Listed[T, V] | Change[T, V] | Relisting[V] | Retrying


class Source(Protocol[T, V]):
    async def list(self) -> tuple[list[T], V]: ...

    def watch(self, version: V) -> AsyncIterator[Change[T, V]]: ...

    def too_old(self, error: Exception) -> bool:
        """Does `error` say the watched version was compacted away (410 Gone)?"""
        ...


async def list_then_watch(
    source: Source[T, V], backoff: Backoff, *, version: V | None = None
) -> AsyncIterator[Event[T, V]]:
    delays = backoff.delays()
    while True:
        try:
            if version is None:
                items, version = await source.list()
                yield Listed(items, version)
            async for change in source.watch(version):
                version = change.version
                yield change
        except Exception as err:
            if source.too_old(err):
                yield Relisting(version)
                version = None
                continue
            delay = next(delays)
            yield Retrying(err, delay)
            await asyncio.sleep(delay)
            continue
        delays = backoff.delays()
