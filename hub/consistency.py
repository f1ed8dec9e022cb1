"""Rules over the whole catalog that no single spec can check alone. Pure: the catalog asks
before it writes, and refuses with the field path.

* every binding's name (`<dataset>.<cluster>`) labels the objects an agent makes: it must fit
  a Kubernetes label value, or the cluster would refuse them later;
* dataset:// mounts name datasets the catalog holds, never lead back to themselves, and a
  dataset still mounted by others is not deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import msgspec

from fluidfed import engines
from fluidfed.errors import Problem
from fluidfed.models import Dataset, MountMode
from fluidfed.validation import MAX_LABEL_VALUE


def check_binding_names(dataset: str, clusters: Iterable[str], path: str) -> list[Problem]:
    """Each binding's name (`<dataset>.<cluster>`) labels every object the agent makes:
    it must fit a Kubernetes label value, or the cluster would refuse them later."""
    too_long = sorted(c for c in clusters if len(dataset) + 1 + len(c) > MAX_LABEL_VALUE)
    if not too_long:
        return []
    return [
        Problem(
            f"dataset {dataset!r} on cluster {too_long[0]!r} makes a binding name of "
            f"{len(dataset) + 1 + len(too_long[0])} characters; Kubernetes labels hold "
            f"{MAX_LABEL_VALUE}: shorten the dataset or the cluster name",
            path=path,
        )
    ]


def dataset_references(d: Dataset) -> list[tuple[int, str]]:
    """(mount index, dataset name) of every dataset:// mount."""
    out = []
    for i, m in enumerate(d.mounts):
        parts = urlsplit(m.uri)
        if parts.scheme == "dataset" and parts.netloc:
            out.append((i, parts.netloc))
    return out


def check_references(d: Dataset, known: Mapping[str, Dataset], path: str) -> list[Problem]:
    """dataset:// mounts must name datasets the catalog holds, and never lead back."""
    problems: list[Problem] = []
    for i, name in dataset_references(d):
        p = f"{path}.mounts[{i}].uri"
        if name != d.name and name not in known:
            problems.append(
                Problem(f"dataset {name!r} is not in the catalog: apply it first", path=p)
            )
            continue
        trail = _cycle(d.name, name, {**known, d.name: d})
        if trail:
            problems.append(
                Problem(f"dataset:// references form a cycle: {' -> '.join(trail)}", path=p)
            )
    return problems


def referrers(name: str, known: Mapping[str, Dataset]) -> list[str]:
    """The datasets that mount `name` through dataset://."""
    return sorted(
        n
        for n, d in known.items()
        if n != name and any(ref == name for _, ref in dataset_references(d))
    )


def mounted_by(name: str, known: Mapping[str, Dataset]) -> list[str]:
    """Every dataset that mounts `name` through dataset://, directly or through others,
    each after the one it mounts (a dataset has one dataset:// mount at most: chains).
    One pass over `known`, then the chain."""
    by: dict[str, list[str]] = {}
    for n, d in known.items():
        for _, ref in dataset_references(d):
            if ref != n:
                by.setdefault(ref, []).append(n)
    out: list[str] = []
    todo = sorted(by.get(name, []))
    seen = {name}
    while todo:
        n = todo.pop(0)
        if n in seen:
            continue
        seen.add(n)
        out.append(n)
        todo += sorted(by.get(n, []))
    return out


def _cycle(start: str, via: str, known: Mapping[str, Dataset]) -> list[str]:
    stack, seen = [(via, [start, via])], set()
    while stack:
        name, trail = stack.pop()
        if name == start:
            return trail
        if name in seen or name not in known:
            continue
        seen.add(name)
        stack += [(ref, [*trail, ref]) for _, ref in dataset_references(known[name])]
    return []


def check_served(d: Dataset, cluster: str, mode: MountMode) -> list[Problem]:
    """Only a cluster with Fluid (csi mode) serves what the FUSE sidecar and the cache
    workers have no reader for: dataset:// (Fluid's cross-namespace sharing), and nfs:// and
    juicefs:// (Fluid's EFC and JuiceFS engines); and they read with one Secret's keys."""
    if mode == "csi":
        return []
    problems = engines.check_one_secret(d)
    for i, m in enumerate(d.mounts):
        scheme = engines.scheme(m)
        if scheme in engines.SIDECAR_SCHEMES:
            continue
        what = {"dataset": "the referenced dataset's own URI"}.get(scheme, "a file:// path")
        problems.append(
            Problem(
                f"{scheme}:// mounts need a cluster with Fluid, and placement picks {cluster}, "
                f"which mounts by sidecar: mount {what} instead, or place this "
                "dataset on clusters with Fluid only",
                path=f"dataset.mounts[{i}].uri",
            )
        )
    return problems


def fluid_references(d: Dataset, homes: Mapping[str, str]) -> Dataset:
    """The spec as bindings carry it: `dataset://name` as Fluid reads it,
    `dataset://<home namespace>/<name>` (the catalog knows where each dataset lives)."""
    refs = dict(dataset_references(d))
    if not refs:
        return d
    mounts = [
        msgspec.structs.replace(m, uri=f"dataset://{homes[refs[i]]}/{refs[i]}")
        if i in refs and refs[i] in homes
        else m
        for i, m in enumerate(d.mounts)
    ]
    return msgspec.structs.replace(d, mounts=mounts)
