"""The hub's SQLite store when things go wrong, on real files and a real hub process: a
damaged file, a store that stops taking writes (/readyz says so, nothing half-applied),
and an online backup restored after the hub stopped."""

import asyncio
import contextlib
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import testing
from devkit.testing import HubProcess, run_cli
from fluidfed import Client, ServerError
from fluidfed.errors import StoreError
from fluidfed.models import Dataset, KubeAccess, Mount
from hub.store import SQLiteStore

pytestmark = pytest.mark.integration

EDGE = testing.cluster("edge", kind="edge", kubernetes=KubeAccess(in_cluster=True))


def test_a_damaged_catalog_file_names_itself_and_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "hub" / "catalog.db"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="fluidfed hub restore"):
        SQLiteStore(bad)
    r = run_cli("hub", "serve", "--port", "0", "--data-dir", str(bad.parent))
    assert r.returncode == 1
    assert str(bad) in r.stderr and "restore it from a backup" in r.stderr
    assert "Traceback" not in r.stderr


def _readyz(url: str, token: str = "") -> tuple[int, str]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url + "/readyz", headers=auth), timeout=10
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _fill(path: Path) -> None:
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs) for the hub's data: it can fill up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_a_full_disk_turns_readyz_false_and_loses_nothing(small_disk: Path) -> None:
    data = small_disk / "hub"
    with HubProcess(data) as hub:
        async with Client(hub.url, hub.admin_token) as admin:
            await admin.register_cluster(EDGE)
            assert _readyz(hub.url)[0] == 200
            filler = small_disk / "filler"
            await asyncio.to_thread(_fill, filler)  # the disk fills up
            big = Dataset(name="d", description="x" * 200_000, mounts=[Mount(uri="s3://b/p")])
            with pytest.raises(ServerError) as info:
                await admin.apply_dataset(big)
            assert info.value.status == 503
            assert "catalog store" in info.value.reason and "free disk space" in info.value.reason
            status, text = _readyz(hub.url, hub.admin_token)
            assert status == 503 and "full" in text
            # a caller without a token learns that, not the store's error
            status, text = _readyz(hub.url)
            assert status == 503 and "full" not in text and "store is failing" in text
            assert await admin.list_datasets() == []  # nothing half-applied
            filler.unlink()
            await admin.apply_dataset(big)  # space again: the hub goes on
            assert _readyz(hub.url)[0] == 200
            assert [d.spec.name for d in await admin.list_datasets()] == ["d"]


async def test_backup_while_running_then_restore_after_stop(tmp_path: Path) -> None:
    data, copy = tmp_path / "hub", tmp_path / "catalog.backup"
    hub = HubProcess(data).start()
    try:
        async with Client(hub.url, hub.admin_token) as admin:
            await admin.register_cluster(EDGE)
            await admin.apply_dataset(Dataset(name="kept", mounts=[Mount(uri="s3://b/p")]))
        r = run_cli("hub", "backup", str(copy), "--data-dir", str(data))
        assert r.returncode == 0, r.stderr
        async with Client(hub.url, hub.admin_token) as admin:
            await admin.apply_dataset(Dataset(name="later", mounts=[Mount(uri="s3://b/q")]))
        refused = run_cli("hub", "restore", str(copy), "--data-dir", str(data))
        assert refused.returncode == 1 and "stop the hub first" in refused.stderr
    finally:
        hub.stop()
    # what is no catalog backup changes nothing: an empty file, another SQLite file (an
    # empty one took the catalog's place, and the hub started from revision 0), a
    # directory, a file that is not there
    empty, other = tmp_path / "empty.db", tmp_path / "other.db"
    empty.write_bytes(b"")
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    before = (data / "catalog.db").read_bytes()
    for bad, says, code in (
        (empty, "not a catalog backup", 1),
        (other, "not a catalog (no table events, meta, records)", 1),
        (tmp_path, "is a directory", 2),
        (tmp_path / "missing.db", "does not exist", 2),
    ):
        r = run_cli("hub", "restore", str(bad), "--data-dir", str(data))
        assert r.returncode == code and says in r.stderr, (bad, r.returncode, r.stderr)
        assert (data / "catalog.db").read_bytes() == before
    r = run_cli("hub", "backup", str(tmp_path / "no-such-dir" / "x.db"), "--data-dir", str(data))
    assert r.returncode == 2 and "does not exist" in r.stderr and "FILE" in r.stderr, r.stderr
    r = run_cli("hub", "backup", str(copy), "--data-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no catalog at" in r.stderr, r.stderr
    r = run_cli("hub", "restore", str(copy), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    # the catalog it replaced is kept beside it, and said where
    (kept,) = data.glob("catalog.db.before-restore-*")
    assert str(kept) in r.stdout and kept.read_bytes() == before
    hub.start()
    try:
        async with Client(hub.url, hub.admin_token) as admin:
            names = sorted(d.spec.name for d in await admin.list_datasets())
        assert names == ["kept"]
    finally:
        hub.stop()
