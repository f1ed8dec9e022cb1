"""The live-object cache: what the cluster holds of the objects the agent owns, by key.

Filled by one list-then-watch per kind, read by the reconciler to compare, and updated by
the reconciler with what an apply returned when the watch has brought nothing newer.
Pure: no Kubernetes calls here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fluidfed import names

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (
        obj.get("apiVersion", ""),
        obj.get("kind", ""),
        meta.get("namespace") or "",
        meta.get("name", ""),
    )


def owner_of(obj: dict[str, Any]) -> str | None:
    """The binding an object was made for (its binding label), if any."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    owner = labels.get(names.BINDING_LABEL)
    return str(owner) if owner else None


class LiveCache:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}

    def __iter__(self) -> Iterator[Key]:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.objects.get(key)

    def put(self, obj: dict[str, Any]) -> None:
        self.objects[key_of(obj)] = obj

    def put_answer(self, got: dict[str, Any], asked_over: dict[str, Any] | None) -> bool:
        """Cache what a write returned, unless the watch brought a copy while the write was
        on its way (`asked_over` is what was cached when it was sent): that copy is the newer
        one or the watch will deliver the write's own event next, in order; overwriting it
        with the answer would hide a later change (a StatefulSet turning ready) until the
        next resync. True when `got` was cached."""
        key = key_of(got)
        if self.objects.get(key) is not asked_over:
            return False
        self.objects[key] = got
        return True

    def remove(self, key: Key) -> dict[str, Any] | None:
        return self.objects.pop(key, None)

    def owned_by(self, binding: str) -> list[Key]:
        return [k for k, obj in self.objects.items() if owner_of(obj) == binding]

    def replace_kind(
        self, api_version: str, kind: str, items: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """A fresh listing of one kind replaces what was cached of it; returns the objects
        that are gone."""
        stale = {k for k in self.objects if k[:2] == (api_version, kind)}
        for obj in items:
            stale.discard(key_of(obj))
            self.put(obj)
        return [self.objects.pop(k) for k in stale]
