"""Durable storage of the catalog behind a small interface.

The hub keeps its catalog in memory and writes every change through a `Store` before it
answers. A change is a list of puts and deletes committed atomically under one new
revision, and only if the catalog is still where the change was computed (`base`): no lost
update. `SQLiteStore` is the embedded default (one file, WAL, synchronous commits: an
acknowledged write survives kill -9), its events recorded so that watches survive a
restart. A `Shared` store (etcd, `hub/etcd.py`) is written by several hub replicas: each
follows its changes to keep its own catalog current, and one replica leads.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from fluidfed.errors import StaleRevision, StoreError


@dataclass(frozen=True, slots=True)
class Put:
    kind: str
    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    name: str
    last: bytes | None = None  # the value as it was, kept in the event for watchers


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class Event:
    revision: int
    kind: str
    name: str
    type: Literal["put", "delete"]
    value: bytes | None


@dataclass(slots=True)
class Snapshot:
    revision: int
    compacted: int  # events at or below this revision are gone
    records: dict[tuple[str, str], bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    base: int = -1  # the revision of the last catalog change (-1: `revision`)
    revisions: dict[tuple[str, str], int] = field(default_factory=dict)  # of each record
    # a shared store's history comes through its feed: the events after this revision up
    # to `revision` are replayed into the watch log (-1: `revision`, nothing to replay)
    follow_from: int = -1

    def __post_init__(self) -> None:
        if self.base < 0:
            self.base = self.revision
        if self.follow_from < 0:
            self.follow_from = self.revision


class Store(Protocol):
    async def load(self) -> Snapshot: ...

    async def commit(self, base: int, ops: list[Op], *, fence: bool = False) -> int:
        """Apply `ops` atomically if the last catalog change is still `base`; the revision
        they were committed as. StaleRevision if another writer came first; `fence`: only
        while this hub leads (a shared store's leader-only decisions)."""

    async def compact(self, keep_events: int, through: int = 0) -> int:
        """Forget all but the newest `keep_events` events, and at least every event up to
        revision `through`; return the compacted revision."""

    async def close(self) -> None: ...


# the kinds of a shared store's events beside the catalog's records: a catalog change was
# committed (its revision is the base of the next), and the heartbeats one replica received
REV, BEAT = "rev", "beat"


@dataclass(frozen=True, slots=True)
class Change:
    """One step of a shared store's feed: the events of one revision (none: the store is
    at `revision`, or the change is one this replica committed, which its catalog applied
    then), or, when the history the feed needed was compacted, a new snapshot."""

    revision: int
    events: list[Event] = field(default_factory=list)
    reset: Snapshot | None = None


@runtime_checkable
class Shared(Protocol):
    """A store that several hub replicas share: what the others write reaches this one
    through `follow`; heartbeats an agent sent to one replica reach the leader through
    `publish_heartbeats`; `campaign`/`keep_leading`/`resign` elect one leader."""

    def follow(self, after: int) -> AsyncIterator[Change]: ...

    async def publish_heartbeats(self, replica: str, beats: dict[str, float]) -> None: ...

    async def current_revision(self) -> int:
        """The store's revision now, with its feed asked to report up to it soon."""

    async def campaign(self, identity: str) -> None:
        """Return once this replica leads."""

    async def keep_leading(self) -> None:
        """Return when this replica no longer leads."""

    async def resign(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, revision INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, value BLOB
);
CREATE INDEX IF NOT EXISTS events_revision ON events (revision);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
"""


def _store_error(path: Path, err: sqlite3.Error) -> StoreError:
    """SQLite's error as one that names the file and what to do about it."""
    text = str(err)
    if "readonly" in text or "read-only" in text:
        todo = "make the file and its directory writable by the hub"
    elif "full" in text:
        todo = "free disk space where it lives (the hub goes on once a write succeeds)"
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        todo = (
            "restore it from a backup (`fluidfed hub restore FILE`), or move it away to "
            "start an empty catalog"
        )
    else:
        todo = "check the file and the disk it lives on"
    return StoreError(f"catalog store {path}: {text}; {todo}")


class SQLiteStore:
    """One SQLite file. Calls run in a worker thread; the hub serialises writes.

    Copying only this file while the hub runs loses what is still in its write-ahead log
    (`catalog.db-wal`): `fluidfed hub backup FILE` makes an online, consistent copy."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit: an acknowledged write survives a crash
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise _store_error(self.path, err) from err
        self._lock = asyncio.Lock()

    def _load(self) -> Snapshot:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        snap = Snapshot(revision=meta["revision"], compacted=meta["compacted"])
        for kind, name, value, rev in self._db.execute(
            "SELECT kind, name, value, revision FROM records"
        ):
            snap.records[(kind, name)] = bytes(value)
            snap.revisions[(kind, name)] = rev
        for rev, kind, name, typ, value in self._db.execute(
            "SELECT revision, kind, name, type, value FROM events ORDER BY seq"
        ):
            snap.events.append(
                Event(rev, kind, name, typ, bytes(value) if value is not None else None)
            )
        return snap

    def _commit(self, base: int, ops: list[Op]) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (current,) = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            if base != current:
                raise StaleRevision(
                    f"a change computed at revision {base} but the store is at {current}",
                    current=current,
                )
            revision = base + 1
            for op in ops:
                if isinstance(op, Put):
                    db.execute(
                        "INSERT INTO records (kind, name, value, revision) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (kind, name) DO UPDATE SET value=excluded.value, "
                        "revision=excluded.revision",
                        (op.kind, op.name, op.value, revision),
                    )
                    db.execute(
                        "INSERT INTO events (revision, kind, name, type, value) "
                        "VALUES (?, ?, ?, 'put', ?)",
                        (revision, op.kind, op.name, op.value),
                    )
                else:
                    db.execute("DELETE FROM records WHERE kind=? AND name=?", (op.kind, op.name))
                    db.execute(
                        "INSERT INTO events (revision, kind, name, type, value) "
                        "VALUES (?, ?, ?, 'delete', ?)",
                        (revision, op.kind, op.name, op.last),
                    )
            db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
            db.execute("COMMIT")
            return revision
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): then only re-raise
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _compact(self, keep_events: int, through: int = 0) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT revision FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep_events,)
            ).fetchone()
            (compacted,) = db.execute("SELECT value FROM meta WHERE key='compacted'").fetchone()
            target = max(compacted, through, row[0] if row is not None else 0)
            if target > compacted:
                # whole revisions only: a watch resumes between revisions, never inside one
                compacted = target
                db.execute("DELETE FROM events WHERE revision <= ?", (compacted,))
                db.execute("UPDATE meta SET value=? WHERE key='compacted'", (compacted,))
            db.execute("COMMIT")
            return int(compacted)
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): then only re-raise
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def load(self) -> Snapshot:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._load)
            except sqlite3.Error as err:
                raise _store_error(self.path, err) from err

    async def commit(self, base: int, ops: list[Op], *, fence: bool = False) -> int:
        # one hub per file: it always leads, `fence` holds by itself
        async with self._lock:
            try:
                return await asyncio.to_thread(self._commit, base, ops)
            except sqlite3.Error as err:
                raise _store_error(self.path, err) from err

    async def compact(self, keep_events: int, through: int = 0) -> int:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._compact, keep_events, through)
            except sqlite3.Error as err:
                raise _store_error(self.path, err) from err

    def backup(self, target: Path) -> None:
        """An online, consistent copy of the catalog (WAL included) into `target`."""
        backup_file(self.path, target)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


# the tables every catalog has (`_SCHEMA`): what tells a catalog from another SQLite file
_CATALOG_TABLES = {"meta", "records", "events"}


def catalog_problem(db: sqlite3.Connection) -> str:
    """What keeps the SQLite file `db` has open from being a catalog ("" if nothing): it
    fails SQLite's integrity check, or lacks the catalog's tables or its revision."""
    (ok,) = db.execute("PRAGMA integrity_check").fetchone()
    if ok != "ok":
        return f"it fails SQLite's integrity check: {ok}"
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if missing := sorted(_CATALOG_TABLES - tables):
        return f"it is a SQLite file but not a catalog (no table {', '.join(missing)})"
    if db.execute("SELECT value FROM meta WHERE key='revision'").fetchone() is None:
        return "it is a SQLite file but not a catalog (no revision)"
    return ""


def _read_only(path: Path) -> str:
    """SQLite's URI of `path`, opened read-only: a '#', '?' or '%' in the path escaped
    (written into the URI as they are, they ended the path)."""
    return f"{path.resolve().as_uri()}?mode=ro"


def backup_file(source: Path, target: Path) -> None:
    """Copy the catalog at `source` into `target` with SQLite's online backup: consistent
    while a hub writes to it, the write-ahead log included; the copy checked to be a whole
    catalog before it takes `target`'s name. Blocking."""
    if not source.exists():
        raise StoreError(f"no catalog at {source}: give the hub's data directory (--data-dir)")
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(_read_only(source), uri=True)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        check = sqlite3.connect(tmp)
        try:
            problem = catalog_problem(check)
        finally:
            check.close()
    except sqlite3.Error as err:
        tmp.unlink(missing_ok=True)
        raise _store_error(source, err) from err
    if problem:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"catalog store {source}: the copy of it is not whole: {problem}")
    tmp.replace(target)


def restore_file(backup: Path, target: Path, stamp: str) -> Path | None:
    """Put a backup in place of the catalog at `target`; the hub must be stopped (its
    write-ahead log is removed with the old file). The backup is checked to be a whole
    catalog first (StoreError, `target` untouched); the catalog it replaces is kept beside
    it, named with `stamp`: where, returned (None where there was none). Blocking."""
    wal = target.with_name(target.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"{target} is in use (its write-ahead log {wal} is not empty): stop the hub first"
        )
    try:
        db = sqlite3.connect(_read_only(backup), uri=True)
        try:
            problem = catalog_problem(db)
        finally:
            db.close()
    except sqlite3.Error as err:
        problem = str(err)
    if problem:
        raise StoreError(
            f"{backup} is not a catalog backup: {problem}; nothing was changed. Give a file "
            "`fluidfed hub backup FILE` wrote"
        )
    staged = target.with_name(target.name + ".restoring")
    backup_file(backup, staged)
    kept = None
    if target.exists():
        kept = target.with_name(f"{target.name}.before-restore-{stamp}")
        n = 1
        while kept.exists():  # (two restores within a second: neither copy is lost)
            n += 1
            kept = target.with_name(f"{target.name}.before-restore-{stamp}-{n}")
        target.replace(kept)
    staged.replace(target)
    for suffix in ("-wal", "-shm"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    return kept
