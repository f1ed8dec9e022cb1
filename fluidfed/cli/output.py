"""Rendering for the CLI: tables with rich, or json / yaml of the API objects."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fluidfed import codec
from fluidfed.models import Binding, BindingStatus, ClusterRecord, DatasetView
from fluidfed.units import format_size

# piped output keeps whole names (rich would squeeze tables to 80 columns)
# data is printed as it is: no markup in what the hub, an agent or a spec says (a '[/]' in a
# URI or an agent's error crashed `get` for every admin); describe marks its own labels up
console = Console(
    markup=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


# wire fields that hold a unix time: shown as RFC 3339 in json and yaml
_TIMES = frozenset(
    {"since", "seen", "reported_at", "hub_last_seen", "requested_at", "at", "last_heartbeat"}
)


def _rfc3339(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _when(v) if k in _TIMES and isinstance(v, int | float) else _rfc3339(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_rfc3339(v) for v in data]
    return data


def _when(t: float) -> str:
    if t <= 0:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def names(kind: str, items: list[str]) -> None:
    """`-o name`: kind/name per line, as kubectl prints it (for scripts)."""
    for n in items:
        sys.stdout.write(f"{kind}/{n}\n")


def dump(obj: Any, fmt: str) -> None:
    data = _rfc3339(codec.to_builtins(obj))
    if fmt == "json":
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


# control characters (C0, DEL, C1): shown as escapes, never sent to the terminal as they
# are (an agent's error with ESC sequences or a newline redrew or forged the admin's screen)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: object) -> str:
    """Stored text fit for a terminal: its control characters as escapes (\\x1b, \\n)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def safe(value: object) -> str:
    """Stored text as it is: a '[' in a URI, a region or an agent's error is not markup,
    and a control character is not the terminal's (`shown`)."""
    return escape(shown(value))


_e = safe


def _cell(value: str) -> Text:
    """A table cell of stored text (`shown`)."""
    return Text(shown(value))


def _say(what: object) -> None:
    """A describe line: its own [bold] labels as markup, the data in it escaped (_e)."""
    console.print(what, markup=True)


def _age(since: float) -> str:
    secs = max(0, int(time.time() - since))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{secs}s"


def cluster_state(c: ClusterRecord) -> str:
    cond = c.status.condition
    if cond is None:
        return "Unknown"
    return f"{cond.type} ({_age(cond.since)})"


def binding_phase(b: Binding, st: BindingStatus | None) -> str:
    if b.deleting:
        return "Deleting"
    return st.phase if st else "Pending"


def _capabilities(c: ClusterRecord) -> str:
    caps = codec.to_builtins(c.spec.capabilities)
    return ",".join(k for k, v in sorted(caps.items()) if v is True) or "-"


def clusters_table(items: list[ClusterRecord], *, wide: bool = False) -> Table:
    t = Table(box=None, header_style="bold")
    cols = ["NAME", "KIND", "REGION", "ZONE", "MODE", "STATUS", "LABELS"]
    for col in cols + (["CAPABILITIES", "REVISION"] if wide else []):
        t.add_column(col)
    for c in items:
        s = c.spec
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        row = [s.name, s.kind, s.region or "-", s.zone or "-", s.mount_mode()]
        row += [cluster_state(c), labels or "-"]
        if wide:
            row += [_capabilities(c), str(c.revision)]
        t.add_row(*map(_cell, row))
    return t


def _size(n: int) -> str:
    return format_size(n) if n else "-"


def datasets_table(items: list[DatasetView], *, wide: bool = False) -> Table:
    """As Fluid users read `kubectl get dataset`, over every cluster the dataset is on;
    wide: where it lives, and each cluster's phase and hit ratio."""
    t = Table(box=None, header_style="bold")
    cols = ["NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE"]
    cols += ["PHASE", "AGE"]
    for col in cols + (["NAMESPACE", "MOUNTS", "PER CLUSTER", "HIT RATIO"] if wide else []):
        t.add_column(col)
    for d in items:
        percent = f"{100 * d.cache_used / d.ufs_total:.1f}%" if d.ufs_total else "-"
        row = [d.spec.name, _size(d.ufs_total), _size(d.cache_used), _size(d.cache_capacity)]
        row += [percent, d.phase, _age(d.created) if d.created else "-"]
        if wide:
            per = [f"{v.binding.cluster}={binding_phase(v.binding, v.status)}" for v in d.bindings]
            ratios = [
                f"{v.binding.cluster}={v.status.hit_ratio:.2f}"
                for v in d.bindings
                if v.status and v.status.hit_ratio is not None
            ]
            row += [d.spec.namespace, ", ".join(m.uri for m in d.spec.mounts)]
            row += [",".join(per) or "-", ",".join(ratios) or "-"]
        t.add_row(*map(_cell, row))
    return t


def bindings_table(
    items: list[Binding], statuses: dict[str, BindingStatus] | None = None, *, wide: bool = False
) -> Table:
    t = Table(box=None, header_style="bold")
    cols = ["NAME", "DATASET", "CLUSTER", "MODE", "REPLICAS", "PHASE", "REVISION"]
    for col in cols + (["WORKERS", "CACHED", "HIT RATIO", "LAST ERROR"] if wide else []):
        t.add_column(col)
    for b in items:
        st = (statuses or {}).get(b.name)
        row = [b.name, b.dataset, b.cluster, b.mode, str(b.replicas)]
        row += [binding_phase(b, st), str(b.revision)]
        if wide:
            row += [
                str(st.ready_workers) if st else "-",
                f"{format_size(st.cache_used)}/{format_size(st.cache_capacity)}" if st else "-",
                f"{st.hit_ratio:.2f}" if st and st.hit_ratio is not None else "-",
                (st.last_error if st else "") or "-",
            ]
        t.add_row(*map(_cell, row))
    return t


def describe_cluster(c: ClusterRecord, bindings: list[Binding]) -> None:
    s = c.spec
    _say(f"[bold]Name:[/bold]          {_e(s.name)}")
    _say(f"[bold]Kind:[/bold]          {_e(s.kind)} ({_e(s.mount_mode())} mounts)")
    where = " / ".join(x for x in (s.region, s.zone) if x) or "-"
    _say(f"[bold]Region/zone:[/bold]   {_e(where)}")
    _say(f"[bold]Status:[/bold]        {_e(cluster_state(c))}")
    labels = ", ".join(f"{k}={v}" for k, v in sorted(s.selector_labels().items()))
    _say(f"[bold]Labels:[/bold]        {_e(labels)}")
    _say(f"[bold]Capabilities:[/bold]  {_e(_capabilities(c))}")
    _say(f"[bold]Revision:[/bold]      {_e(c.revision)}")
    _say("[bold]Bindings:[/bold]")
    if not bindings:
        _say("  none: no dataset is placed here")
    for b in bindings:
        _say(f"  {_e(b.name)}: {_e(b.dataset)}, {_e(b.mode)}, {_e(b.replicas)} replicas")


def describe_dataset(d: DatasetView) -> None:
    s = d.spec
    _say(f"[bold]Name:[/bold]        {_e(s.name)}")
    _say(f"[bold]Namespace:[/bold]   {_e(s.namespace)}")
    _say(f"[bold]Generation:[/bold]  {_e(d.generation)} (revision {_e(d.revision)})")
    _say(f"[bold]Phase:[/bold]       {_e(d.phase)}")
    _say("[bold]Mounts:[/bold]")
    for m in s.mounts:
        extra = f" (secret {m.secret})" if m.secret else ""
        _say(f"  {_e(m.uri)}{_e(extra)}")
    tiers = ", ".join(f"{t.medium} {format_size(t.quota)}" for t in s.cache.tiers)
    cache = f"{s.cache.engine}, {s.cache.replicas} replicas, {tiers}"
    _say(f"[bold]Cache:[/bold]       {_e(cache)}")
    if s.cache.sidecar_tiers:  # (else 128 MiB of each sidecar's memory)
        own = ", ".join(f"{t.medium} {format_size(t.quota)}" for t in s.cache.sidecar_tiers)
        _say(f"[bold]Sidecars:[/bold]    {_e(own)} each (injected ones)")
    pl = s.placement
    parts = []
    if pl.clusters:
        parts.append("clusters " + ",".join(pl.clusters))
    if pl.selector is not None:
        sel = [f"{k}={v}" for k, v in pl.selector.match_labels.items()]
        sel += [
            f"{e.key} {e.operator} ({','.join(e.values)})".replace(" ()", "")
            for e in pl.selector.match_expressions
        ]
        parts.append("selector " + ",".join(sel))
    if pl.kinds:
        parts.append("kinds " + ",".join(pl.kinds))
    if pl.max_clusters:
        parts.append(f"at most {pl.max_clusters}")
    if pl.spread_by:
        parts.append(f"spread by {pl.spread_by}")
    _say(f"[bold]Placement:[/bold]   {_e('; '.join(parts) or 'all clusters')}")
    _say("[bold]Access:[/bold]")
    for a in s.access_list():
        rw = "read-only" if a.read_only else "read-write"
        _say(f"  {_e(a.namespace)}: /{_e(a.sub_path)} {rw}")
    _say("[bold]Bindings:[/bold]")
    t = Table(box=None, header_style="bold")
    for col in ("CLUSTER", "MODE", "REPLICAS", "PHASE", "READY", "CACHED", "HIT RATIO", "ERROR"):
        t.add_column(col)
    for v in d.bindings:
        b, st = v.binding, v.status
        row = [
            b.cluster,
            b.mode,
            str(b.replicas),
            binding_phase(b, st),
            str(st.ready_workers) if st else "-",
            f"{format_size(st.cache_used)}/{format_size(st.cache_capacity)}" if st else "-",
            f"{st.hit_ratio:.2f}" if st and st.hit_ratio is not None else "-",
            (st.last_error if st else "") or "-",
        ]
        t.add_row(*map(_cell, row))
    if d.bindings:
        _say(t)
    else:
        _say(
            "  none: no cluster matches the placement, or those that do could mount nothing "
            "(the hub's log names them)"
        )
    short = [(v.binding.cluster, v.status) for v in d.bindings if v.status]
    short = [
        (c, st) for c, st in short if st.cache_not_kept or st.cache_shed or st.cache_disks_full
    ]
    if short:
        _say("[bold]Cache disks (since each worker started):[/bold]")
        for cluster, st in short:
            if st.cache_disks_full:
                _say(
                    f"  {_e(cluster)}: now, {st.cache_disks_full} worker(s) keep no block on "
                    "disk: their node's disk is below the tier's floor (cache.tiers[]."
                    "min_free) even without the cache's blocks; free space on those nodes, "
                    "or lower min_free"
                )
            if st.cache_not_kept or st.cache_shed:
                _say(
                    f"  {_e(cluster)}: {st.cache_not_kept} blocks not kept (a disk full, "
                    f"failing or at its floor), {st.cache_shed} evicted to keep its floor "
                    "free (cache.tiers[].min_free): where these grow, the disks give the "
                    "cache less than its quota; each worker's /v1/status says which (writes)"
                )
    measured = [(v.binding.cluster, v.status.metrics) for v in d.bindings if v.status]
    if any(not f.empty() for _, f in measured):
        _say("[bold]Metrics (agents' sliding window):[/bold]")
        for cluster, figs in measured:
            if figs.empty():
                continue
            parts = []
            if figs.read_bytes_per_second is not None:
                parts.append(f"reads {format_size(int(figs.read_bytes_per_second))}/s")
            if figs.hit_ratio is not None:
                parts.append(f"hit ratio {figs.hit_ratio:.2f}")
            if figs.cache_used_ratio is not None:
                parts.append(f"cache used {figs.cache_used_ratio:.0%}")
            _say(f"  {_e(cluster)}: {_e(', '.join(parts))}")
    loads = [(v.binding.cluster, v.status.load) for v in d.bindings if v.status and v.status.load]
    if loads:
        _say("[bold]Warm-up (latest per cluster):[/bold]")
        for cluster, ld in loads:
            assert ld is not None
            what = f"/{ld.path}" if ld.path else "whole dataset"
            note = f" - {ld.message}" if ld.message else ""
            _say(
                f"  {_e(cluster)}: {_e(ld.phase)}, {_e(what)}, {ld.percent():.1f}% cached "
                f"({_e(ld.cached if ld.phase in ('Done', 'Failed') else ld.done)}/{_e(ld.blocks)} "
                f"blocks, {_e(format_size(ld.bytes))} pulled, {_e(ld.workers)} workers){_e(note)}"
            )
    decisions = [(v.binding.cluster, x) for v in d.bindings for x in v.decisions]
    if decisions:
        _say("[bold]Autoscaling decisions:[/bold]")
        for cluster, x in sorted(decisions, key=lambda cx: cx[1].at)[-10:]:
            _say(f"  {_e(_age(x.at))} ago  {_e(cluster)}: {_e(x.reason)}")
