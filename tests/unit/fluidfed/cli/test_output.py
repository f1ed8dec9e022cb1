"""`fluidfed get datasets` as Fluid users read `kubectl get dataset`."""

import io
import time

import msgspec
import orjson
import pytest
from rich.console import Console

from devkit import testing
from fluidfed.cli import output
from fluidfed.models import BindingView, Condition, DatasetView

GIB = 2**30


def shown(table: object) -> list[list[str]]:
    c = Console(file=io.StringIO(), width=300)
    c.print(table)
    text = c.file.getvalue()  # type: ignore[attr-defined]
    return [line.split("  ") for line in text.splitlines()]


def view() -> DatasetView:
    ds = testing.dataset("imagenet", namespace="ml")
    bound = testing.binding_status("Bound", cache_used=GIB, ufs_total=4 * GIB, hit_ratio=0.9)
    views = [
        BindingView(binding=testing.binding(ds, "a"), status=bound),
        BindingView(binding=testing.binding(ds, "b"), status=testing.binding_status("Bound")),
        BindingView(binding=testing.binding(ds, "c")),
    ]
    return DatasetView(
        spec=ds, generation=1, revision=3, bindings=views, phase="PartiallyBound (2/3)",
        cache_used=GIB, cache_capacity=6 * GIB, ufs_total=4 * GIB, created=time.time() - 7200,
    )  # fmt: skip


def test_fluids_columns() -> None:
    lines = shown(output.datasets_table([view()]))
    header = [c.strip() for c in lines[0] if c.strip()]
    assert header == [
        "NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE", "AGE",
    ]  # fmt: skip
    row = [c.strip() for c in lines[1] if c.strip()]
    assert row == ["imagenet", "4GiB", "1GiB", "6GiB", "25.0%", "PartiallyBound (2/3)", "2h"]


def test_wide_shows_each_clusters_phase_and_hit_ratio() -> None:
    text = "\n".join("  ".join(r) for r in shown(output.datasets_table([view()], wide=True)))
    assert "a=Bound,b=Bound,c=Pending" in text and "a=0.90" in text and "s3://b/p" in text


def test_unknown_figures_are_dashes() -> None:
    v = DatasetView(spec=testing.dataset("d"), generation=1, revision=1)
    row = [c.strip() for c in shown(output.datasets_table([v]))[1] if c.strip()]
    assert row == ["d", "-", "-", "-", "-", "Pending", "-"]


def test_times_in_yaml_and_json_are_rfc3339(capsys: pytest.CaptureFixture[str]) -> None:
    rec = testing.cluster_record("edge")
    rec = msgspec.structs.replace(
        rec, status=msgspec.structs.replace(rec.status, condition=Condition("Ready", since=1000))
    )
    output.dump(rec, "yaml")
    out = capsys.readouterr().out
    assert "since: '1970-01-01T00:16:40Z'" in out, out
    output.dump([rec], "json")
    got = orjson.loads(capsys.readouterr().out)
    assert got[0]["status"]["condition"]["since"] == "1970-01-01T00:16:40Z"


def test_stored_text_is_printed_as_it_is_not_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    # a cluster's agent writes its binding's last_error: '[/]' there crashed `get -o wide`
    # and `describe` for every admin, and '[eEinumkKMGTP]' vanished from a real message
    ds = testing.dataset("d", uri="s3://datasets/[/]imagenet")
    err = "quantities must match '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' [/] [bold]x"
    st = testing.binding_status("Failed", last_error=err)
    b = testing.binding(ds, "a")
    v = DatasetView(spec=ds, generation=1, revision=1, bindings=[BindingView(binding=b, status=st)])
    output.describe_dataset(v)
    out = capsys.readouterr().out
    assert "s3://datasets/[/]imagenet" in out
    assert "[eEinumkKMGTP]" in out and "[/] [bold]x" in out
    assert "Name:" in out and "[bold]Name" not in out  # its own labels still markup
    output.console.print(output.bindings_table([b], {b.name: st}, wide=True))
    output.console.print(output.datasets_table([v], wide=True))
    out = capsys.readouterr().out
    assert "[eEinumkKMGTP]" in out and "s3://datasets/[/]imagenet" in out


def test_stored_text_sends_no_control_character_to_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cluster's agent writes its binding's last_error and its warm-up's message: ESC
    sequences there cleared or retitled the admin's terminal, and a newline forged a row."""
    evil = "\x1b[2J\x1b]0;pwned\x07\x1b[31mFAKE\r\nline2\x9b"
    ds = testing.dataset("d")
    st = testing.binding_status("Failed", last_error=evil)
    b = testing.binding(ds, "a")
    v = DatasetView(spec=ds, generation=1, revision=1, bindings=[BindingView(binding=b, status=st)])
    output.describe_dataset(v)
    output.console.print(output.bindings_table([b], {b.name: st}, wide=True))
    out = capsys.readouterr().out
    assert not any((ord(ch) < 32 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F for ch in out)
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\x1b[31mFAKE\\r\\nline2\\x9b" in out
    assert not any(line.startswith("line2") for line in out.splitlines())
    assert output.safe("tab\there [x]") == "tab\\there \\[x]"


def test_describe_says_where_the_cache_disks_did_not_keep_or_shed_blocks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cluster whose workers' disk tiers did not keep blocks, or evicted some to keep the
    disk's floor free, is named with both counts; one with neither is not."""
    ds = testing.dataset("d")
    short = testing.binding_status("Bound", cache_not_kept=3, cache_shed=120)
    views = [
        BindingView(binding=testing.binding(ds, "a"), status=short),
        BindingView(binding=testing.binding(ds, "b"), status=testing.binding_status("Bound")),
    ]
    output.describe_dataset(DatasetView(spec=ds, generation=1, revision=1, bindings=views))
    out = capsys.readouterr().out
    assert "Cache disks (since each worker started):" in out
    assert "a: 3 blocks not kept" in out and "120 evicted to keep its floor free" in out
    assert "b: " not in out.split("Cache disks (since each worker started):")[1]
    assert "keep no block" not in out
    output.describe_dataset(DatasetView(spec=ds, generation=1, revision=1, bindings=views[1:]))
    assert "Cache disks" not in capsys.readouterr().out
    # workers whose disk keeps no block now: said on their own, with what to do
    full = testing.binding_status("Bound", cache_disks_full=2)
    views = [BindingView(binding=testing.binding(ds, "c"), status=full)]
    output.describe_dataset(DatasetView(spec=ds, generation=1, revision=1, bindings=views))
    out = " ".join(capsys.readouterr().out.split())
    assert "c: now, 2 worker(s) keep no block on disk" in out
    assert "free space on those nodes, or lower min_free" in out and "blocks not kept" not in out


def test_describe_names_the_sidecars_own_tiers_where_the_dataset_names_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = testing.dataset("d")
    output.describe_dataset(DatasetView(spec=plain, generation=1, revision=1))
    assert "Sidecars:" not in capsys.readouterr().out
    tiers = [testing.cache_tier("MEM", 2**28), testing.cache_tier("SSD", 20 * 2**30)]
    cache = msgspec.structs.replace(plain.cache, sidecar_tiers=tiers)
    ds = msgspec.structs.replace(plain, cache=cache)
    output.describe_dataset(DatasetView(spec=ds, generation=1, revision=1))
    assert "Sidecars:    MEM 256MiB, SSD 20GiB each (injected ones)" in capsys.readouterr().out
