"""The catalog on etcd, for several hub replicas: the one module that speaks etcd.

etcd's v3 API over gRPC (grpc.aio with the stubs aetcd generates). Keys live under a
prefix: `<prefix>c/<kind>/<name>` for the catalog's records; `<prefix>rev`, written by
every catalog change (a change commits only if it is still at the revision the change was
computed on, so two replicas never lose each other's update); `<prefix>beat/<replica>`,
the heartbeats each replica received; `<prefix>leader`, held with a lease by the leading
replica; `<prefix>compacted`, where the history kept for watches starts. The catalog's
revision is etcd's revision; every replica follows the prefix with one etcd watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import msgspec
from aetcd import rpc

from fluidfed import tls
from fluidfed.errors import ConfigError, NotLeader, StaleRevision, StoreError
from hub.store import BEAT, REV, Change, Event, Op, Put, Snapshot

log = logging.getLogger("fluidfed.hub.etcd")
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

_MOD, _CREATE, _LEASE = rpc.Compare.MOD, rpc.Compare.CREATE, rpc.Compare.LEASE
_EQUAL = rpc.Compare.EQUAL
PROGRESS_EVERY = 1.0
_TEMPORARY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    """Where etcd is and how to reach it; from `[hub] store = "etcd://h:p,h:p"` and the
    hub's etcd_* settings."""

    endpoints: tuple[str, ...]
    prefix: str = "/fluidfed/"
    ca_file: str = ""  # TLS: verify the members against this CA ...
    cert_file: str = ""  # ... and present this client certificate (etcd's --client-cert-auth)
    key_file: str = ""
    username: str = ""  # etcd's own users (etcd's --auth): the password is read from ...
    password_file: str = ""  # ... this file, or ...
    password_env: str = "FLUIDFED_ETCD_PASSWORD"  # ... this variable
    lease_ttl: int = 3  # the leader's lease: another replica leads within about this long
    compact: bool = True  # compact etcd's (whole) history; false: etcd's owner does
    timeout: float = 5.0  # one call to etcd


def parse_url(url: str, path: str = "hub.store") -> tuple[str, ...]:
    """`etcd://host:port,host:port` -> its endpoints; a ConfigError that says what to write."""
    parts = urlsplit(url)
    hosts = [h.strip() for h in parts.netloc.split(",") if h.strip()]
    bad = [h for h in hosts if ":" not in h or not h.rsplit(":", 1)[1].isdigit()]
    if parts.scheme != "etcd" or not hosts or bad or parts.path not in ("", "/"):
        raise ConfigError.one(
            f"{url!r} is not an etcd store: write etcd://HOST:PORT[,HOST:PORT...] (the "
            "members' client URLs), e.g. etcd://127.0.0.1:2379,127.0.0.1:22379",
            path=path,
        )
    return tuple(hosts)


def _end(prefix: bytes) -> bytes:
    """The end of the key range of every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdStore:
    """The `hub.store.Store` and `hub.store.Shared` calls on an etcd cluster."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        p = settings.prefix.encode()
        self._records, self._rev = p + b"c/", p + b"rev"
        self._beat, self._leader = p + b"beat/", p + b"leader"
        self._compacted = p + b"compacted"  # where the history kept for watches starts
        self._prefix = p
        self._password = self._read_password()
        # TLS: the files read again when they change (`reload_tls`), the credentials made
        # of them, and the channels made with the ones before, closing
        named = (("ca_file", settings.ca_file), ("cert_file", settings.cert_file),
                 ("key_file", settings.key_file))  # fmt: skip
        self._tls_files = [(key, path) for key, path in named if path]
        self._tls = (
            tls.Watched(*(path for _, path in self._tls_files))
            if settings.ca_file or settings.cert_file
            else None
        )
        self._creds = self._credentials()
        self._tls_waiting: tuple[bytes, ...] | None = None  # (new files etcd refused: said)
        # the calls under way on each channel, the channels made with TLS files replaced
        # since (closed once no call uses them) and their closing
        self._users: dict[grpc.aio.Channel, int] = {}
        self._retired: weakref.WeakSet[grpc.aio.Channel] = weakref.WeakSet()
        self._closing: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        self._closed = False
        self._endpoint = random.randrange(len(settings.endpoints))  # spread the replicas
        # a channel per member, kept open (gRPC reconnects by itself), and the auth token
        # each member gave (etcd's simple tokens are a member's own)
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._tokens: dict[int, Metadata] = {}
        self._lease = 0  # the leader's lease, while this replica leads
        self._renewed = 0.0  # when it was last renewed (monotonic)
        self._born = 0  # the revision of the catalog's first change: no history before
        self._progress_wanted = asyncio.Event()  # someone waits to see etcd's revision
        self._told_compaction = False
        self.compacted = 0
        # the revisions this replica committed that `follow` has not passed yet: the catalog
        # applied them when it committed, so their events are not read again (one apply to
        # N clusters is N events: reading them cost each replica as much as the other's)
        self._own: set[int] = set()
        self._followed = 0  # the last revision `follow` passed on

    @property
    def where(self) -> str:
        return "etcd://" + ",".join(self.settings.endpoints)

    def _read_password(self) -> str:
        s = self.settings
        if not s.username:
            return ""
        if s.password_file:
            try:
                with open(s.password_file) as f:
                    return f.read().strip()
            except OSError as err:
                raise ConfigError.one(
                    f"cannot read etcd's password from {s.password_file}: {err}",
                    path="hub.etcd_password_file",
                ) from None
        password = os.environ.get(s.password_env, "")
        if not password:
            raise ConfigError.one(
                f"etcd user {s.username} needs a password: set etcd_password_file or the "
                f"variable {s.password_env}",
                path="hub.etcd_username",
            )
        return password

    # --- connection ----------------------------------------------------------------------

    def _credentials(self) -> grpc.ChannelCredentials | None:
        s = self.settings
        if not (s.ca_file or s.cert_file):
            return None

        def read(path: str, key: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as err:
                raise ConfigError.one(
                    f"cannot read {path}: {err}", path=f"hub.etcd_{key}"
                ) from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(s.ca_file, "ca_file"),
            private_key=read(s.key_file, "key_file"),
            certificate_chain=read(s.cert_file, "cert_file"),
        )

    @property
    def reloads_tls(self) -> bool:
        """Whether it has TLS files to read again (`reload_tls`)."""
        return self._tls is not None

    async def reload_tls(self) -> bool:
        """Read etcd's TLS files again if they changed (cert-manager renews the hub's
        client certificate, or etcd's CA is rotated), and use them once a call with them
        reaches etcd: calls from then on go over new channels made with them, and each
        channel before closes once no call uses it (the watch of etcd stays on its
        connection until that ends). True when new ones are in use. Until etcd takes them
        (a CA rotated in the hub's files before etcd's members serve certificates of it),
        the ones before stay in use, said once, and they are tried again at each look;
        files that do not load (a certificate replaced before its key) keep the ones
        before too, said once, tried again at their next change. One look at a time."""
        if self._tls is None:
            return False
        async with self._reloading:
            return await self._look_at_tls()

    async def _look_at_tls(self) -> bool:
        assert self._tls is not None
        try:
            got = self._tls.changed()
        except OSError as err:
            return self._tls_failing(f"cannot read them ({err})")
        if got is None:
            return False
        files = {key: data for (key, _), data in zip(self._tls_files, got, strict=True)}
        ca, cert, key = (files.get(k) for k in ("ca_file", "cert_file", "key_file"))
        try:
            if cert is not None or key is not None:
                tls.check_pair(cert or b"", key or b"")
            if ca is not None:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=ca.decode())
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as err:
            return self._tls_failing(f"not a CA, certificate and key that load ({err})")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
        at = self._endpoint
        channel = self._open(at, creds)
        self._use(channel)
        switched = False
        try:  # (one call with them first: `_rev`, counted, is what every replica may read)
            for renewed in (False, True):
                try:
                    metadata = await self._token(at, channel)
                    probe = rpc.RangeRequest(key=self._rev, count_only=True)
                    await rpc.KVStub(channel).Range(
                        probe, metadata=metadata, timeout=self.settings.timeout
                    )
                    break
                except grpc.aio.AioRpcError as err:
                    if renewed or not self._stale_token(err, at):
                        raise
                    self._tokens.pop(at, None)  # (`_token` authenticates again)
        except grpc.aio.AioRpcError as err:
            if got != self._tls_waiting:
                self._tls_waiting = got
                log.warning(
                    "etcd's TLS files (%s) changed, but a call with them to %s failed (%s): "
                    "the ones before stay in use; tried again every %.0f s and on SIGHUP",
                    ", ".join(self._tls.files), self.settings.endpoints[at],
                    err.details() or err.code(), tls.RECHECK,
                )  # fmt: skip
            return False
        else:
            self._creds, self._tls_waiting = creds, None
            old, self._channels = self._channels, {at: channel}
            for before in old.values():
                self._retire(before)
            self._tls.taken()
            switched = True
            return True
        finally:
            if not switched:  # (refused, or cancelled: closed once `_unuse` lets it go)
                self._retired.add(channel)
            self._unuse(channel)

    def _tls_failing(self, why: str) -> bool:
        assert self._tls is not None
        self._tls.failed()
        log.warning(
            "etcd's TLS files (%s) changed but were not loaded: %s; the ones before stay "
            "in use until they change again", ", ".join(self._tls.files), why,
        )  # fmt: skip
        return False

    def _use(self, channel: grpc.aio.Channel) -> None:
        self._users[channel] = self._users.get(channel, 0) + 1

    def _unuse(self, channel: grpc.aio.Channel) -> None:
        """A call on `channel` ended: one retired closes with the last."""
        left = self._users.pop(channel, 1) - 1  # (none counted once closed)
        if left:
            self._users[channel] = left
        elif channel in self._retired and not self._closed:
            self._retire(channel)

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close `channel` (its TLS files replaced) once no call uses it."""
        self._retired.add(channel)
        if channel not in self._users:
            closing = asyncio.create_task(channel.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _open(self, at: int, creds: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        target = self.settings.endpoints[at]
        options = [("grpc.max_receive_message_length", 256 * 2**20)]
        if creds is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, creds, options=options)

    def _channel(self, at: int) -> grpc.aio.Channel:
        """Member `at`'s channel, kept open (gRPC reconnects by itself)."""
        channel = self._channels.get(at)
        if channel is None:
            channel = self._channels[at] = self._open(at, self._creds)
        return channel

    async def _token(self, at: int, channel: grpc.aio.Channel) -> Metadata:
        """The call metadata for member `at`: its auth token, asked for once."""
        if self.settings.username and at not in self._tokens:
            resp = await rpc.AuthStub(channel).Authenticate(
                rpc.AuthenticateRequest(name=self.settings.username, password=self._password),
                timeout=self.settings.timeout,
            )
            self._tokens[at] = (("token", resp.token),)
        return self._tokens.get(at, ())

    def _next_endpoint(self, failed: int) -> None:
        """Member `failed` is away: the next one (unless another call moved on already)."""
        self._tokens.pop(failed, None)
        if self._endpoint == failed:
            self._endpoint = (failed + 1) % len(self.settings.endpoints)

    def _error(self, err: grpc.aio.AioRpcError) -> StoreError:
        details = err.details() or str(err.code())
        if "too many operations" in details:
            todo = "raise etcd's --max-txn-ops (the hub writes a change in one transaction)"
        elif "request is too large" in details:
            todo = "raise etcd's --max-request-bytes, or make the dataset's spec smaller"
        elif err.code() == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in details:
            todo = "check etcd_username and its password"
        elif err.code() == grpc.StatusCode.PERMISSION_DENIED:
            todo = f"grant the etcd user read and write on the prefix {self.settings.prefix}"
        elif self._creds is not None and any(
            word in details for word in ("TSI_", "SSL", "ssl", "handshake", "Unwrap")
        ):
            todo = (
                "TLS to etcd failed: check etcd_ca_file (the CA of etcd's certificates) "
                "and etcd_cert_file/etcd_key_file (a client certificate etcd trusts, where "
                "etcd asks for one)"
            )
        elif err.code() in _TEMPORARY:
            todo = (
                "check that a majority of its members run and are reachable from the hub "
                "(and, if etcd serves TLS, set etcd_ca_file and a client certificate)"
            )
        else:
            todo = "check etcd's members and their logs"
        return StoreError(f"catalog store {self.where}: {details}; {todo}")

    def _stale_token(self, err: grpc.aio.AioRpcError, at: int) -> bool:
        """The auth token member `at` gave no longer counts: etcd's simple tokens expire
        (--auth-token-ttl idle, a password changed), its JWTs with any change of its users
        and roles ("revision of auth store is old")."""
        return at in self._tokens and (
            err.code() == grpc.StatusCode.UNAUTHENTICATED
            or "auth store is old" in (err.details() or "")
        )

    async def _call(self, what: Callable[[grpc.aio.Channel, Metadata], Awaitable[T]]) -> T:
        """One call to etcd, on the next member when one is away (each tried once), with a
        new token from the same member, once, when the one it gave went stale."""
        tries = len(self.settings.endpoints)
        attempt, renewed = 0, False
        while True:
            at = self._endpoint
            channel = self._channel(at)
            self._use(channel)
            try:
                metadata = await self._token(at, channel)
                return await what(channel, metadata)
            except grpc.aio.AioRpcError as err:
                if not renewed and self._stale_token(err, at):
                    self._tokens.pop(at, None)  # (`_token` authenticates again)
                    renewed = True
                    continue
                if err.code() in _TEMPORARY and attempt < tries - 1:
                    attempt += 1
                    self._next_endpoint(at)
                    continue
                raise self._error(err) from err
            finally:
                self._unuse(channel)

    async def _rpc(self, stub: Any, method: str, request: Any, deadline: float = 0.0) -> Any:
        """`stub.method(request)` (a unary call of etcd's API) through `_call`."""

        async def call(channel: grpc.aio.Channel, metadata: Metadata) -> Any:
            return await getattr(stub(channel), method)(
                request, timeout=deadline or self.settings.timeout, metadata=metadata
            )

        return await self._call(call)

    # --- the Store calls ---------------------------------------------------------------

    async def load(self, *, history: bool = True) -> Snapshot:
        """The records as of now; the history this store kept comes through `follow` from
        `follow_from` (without `history`: none, watches from before now are Gone)."""
        everything = rpc.RangeRequest(key=self._prefix, range_end=_end(self._prefix))
        resp = await self._rpc(rpc.KVStub, "Range", everything, deadline=60.0)
        now = int(resp.header.revision)
        start = 0 if history else now  # never compacted by a hub: all of etcd's history
        self._born = now + 1  # the catalog's first change (the prefix is empty: the next)
        # base 0 until the catalog's revision key says otherwise: no change yet (the compare
        # of a key never written is with 0)
        snap = Snapshot(revision=now, compacted=start, base=0, follow_from=start)
        for kv in resp.kvs:
            if kv.key == self._compacted and history:
                snap.compacted = snap.follow_from = min(now, int(kv.value))
            elif kv.key == self._rev:
                snap.base = kv.mod_revision
                self._born = kv.create_revision
            elif kv.key.startswith(self._records):
                kind, _, name = kv.key[len(self._records) :].decode().partition("/")
                snap.records[(kind, name)] = kv.value
                snap.revisions[(kind, name)] = kv.mod_revision
            elif kv.key.startswith(self._beat):
                replica = kv.key[len(self._beat) :].decode()
                snap.events.append(Event(kv.mod_revision, BEAT, replica, "put", kv.value))
        return snap

    def _key(self, kind: str, name: str) -> bytes:
        return self._records + f"{kind}/{name}".encode()

    async def commit(self, base: int, ops: list[Op], *, fence: bool = False) -> int:
        compare = [rpc.Compare(result=_EQUAL, target=_MOD, key=self._rev, mod_revision=base)]
        if fence:
            if not self._lease:
                raise NotLeader("this hub replica does not lead: the leader decides this")
            compare.append(
                rpc.Compare(result=_EQUAL, target=_LEASE, key=self._leader, lease=self._lease)
            )
        success = [rpc.RequestOp(request_put=rpc.PutRequest(key=self._rev, value=b""))]
        for op in ops:
            key = self._key(op.kind, op.name)
            if isinstance(op, Put):
                success.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=op.value)))
            else:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
        # on failure: where the catalog is now, for this replica to catch up to
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=self._rev))]
        req = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        resp = await self._rpc(rpc.KVStub, "Txn", req)
        if not resp.succeeded:
            if fence and not await self._still_leading():
                self._lease = 0
                raise NotLeader("this hub replica lost the lead: the new leader decides")
            kvs = resp.responses[0].response_range.kvs
            raise StaleRevision(
                f"another hub replica changed the catalog after revision {base}",
                current=kvs[0].mod_revision if kvs else 0,
            )
        revision = int(resp.header.revision)
        if revision > self._followed:  # else the feed passed it already, events and all
            self._own.add(revision)
        return revision

    async def compact(self, keep_events: int, through: int = 0) -> int:
        """Compact etcd's history to all but about the newest `keep_events` revisions (and
        at least through `through`)."""
        if not self.settings.compact:
            return self.compacted  # left to etcd's owner (etcd_compact = false)
        now = await self.current_revision()
        target = min(now, max(through, now - keep_events))
        if target <= self.compacted:
            return self.compacted
        try:
            await self._rpc(rpc.KVStub, "Compact", rpc.CompactionRequest(revision=target))
        except StoreError as err:
            if "permission denied" in str(err):
                if not self._told_compaction:
                    log.warning(
                        "etcd user %s may not compact etcd's history: compact it otherwise "
                        "(etcd's --auto-compaction-retention) or give the user the root role",
                        self.settings.username,
                    )
                    self._told_compaction = True
                return self.compacted
            if "compacted" not in str(err):  # another replica compacted further: fine
                raise
        mark = rpc.PutRequest(key=self._compacted, value=str(target).encode())
        await self._rpc(rpc.KVStub, "Put", mark)  # a replica that starts replays from here
        self.compacted = target
        return target

    async def snapshot(self, out: Path) -> int:
        """etcd's own snapshot into `out` (what `etcdctl snapshot save` writes: every key
        of the cluster, consistent, with etcd's checksum at its end); its size in bytes.
        `etcdutl snapshot restore` puts it in the members' data directories."""
        part = out.with_name(out.name + ".part")

        async def save(channel: grpc.aio.Channel, metadata: Metadata) -> int:
            size = 0
            stream = rpc.MaintenanceStub(channel).Snapshot(
                rpc.SnapshotRequest(), timeout=600.0, metadata=metadata
            )
            f = await asyncio.to_thread(open, part, "wb")
            try:
                async for chunk in stream:
                    await asyncio.to_thread(f.write, chunk.blob)
                    size += len(chunk.blob)
            finally:
                f.close()
            return size

        try:
            size = await self._call(save)
            if not size:
                raise StoreError(f"catalog store {self.where} sent an empty snapshot")
            os.replace(part, out)
        except OSError as err:
            raise StoreError(
                f"cannot write the snapshot to {out}: {err}; choose a writable place"
            ) from None
        finally:
            part.unlink(missing_ok=True)
        return size

    async def close(self) -> None:
        await self.resign()
        self._closed = True
        channels = [*self._channels.values(), *(c for c in self._users if c in self._retired)]
        self._channels, self._users = {}, {}
        for channel in channels:
            await channel.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    # --- the Shared calls ----------------------------------------------------------------

    def _event(self, ev: Any) -> Event | None:
        kv = ev.kv
        deleted = ev.type == rpc.Event.DELETE
        if kv.key.startswith(self._records):
            kind, _, name = kv.key[len(self._records) :].decode().partition("/")
            prev = ev.prev_kv.value if deleted and ev.HasField("prev_kv") else None
            value = prev if deleted else kv.value
            return Event(kv.mod_revision, kind, name, "delete" if deleted else "put", value)
        if kv.key == self._rev:
            return Event(kv.mod_revision, REV, "", "put", None)
        if kv.key.startswith(self._beat) and not deleted:
            replica = kv.key[len(self._beat) :].decode()
            return Event(kv.mod_revision, BEAT, replica, "put", kv.value)
        return None

    async def follow(self, after: int) -> AsyncIterator[Change]:
        """Every change after revision `after`, one revision at a time, and progress while
        quiet; on to the next member when one goes away; a new snapshot if etcd compacted
        what was needed."""
        start = after + 1
        delay = 0.1
        while True:
            call, ask, at, channel = None, None, self._endpoint, None
            try:
                channel = self._channel(at)
                self._use(channel)
                metadata = await self._token(at, channel)
                # hasleader: a member cut off from the others ends the watch, not silence
                call = rpc.WatchStub(channel).Watch(metadata=(*metadata, ("hasleader", "true")))
                await call.write(
                    rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(
                            key=self._prefix,
                            range_end=_end(self._prefix),
                            start_revision=start,
                            prev_kv=True,
                            progress_notify=True,
                        )
                    )
                )
                ask = asyncio.create_task(self._ask_progress(call))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        break
                    if resp.compact_revision and resp.compact_revision <= self._born:
                        start = resp.compact_revision  # only others' history went: go on
                        break
                    if resp.compact_revision:
                        log.warning(
                            "etcd compacted revision %d this replica needed: loading the "
                            "catalog again (agents watching it list again)",
                            start,
                        )
                        snap = await self.load(history=False)
                        self._passed(snap.revision)
                        yield Change(snap.revision, reset=snap)
                        start = snap.revision + 1
                        break
                    if resp.canceled:
                        raise StoreError(f"etcd ended the watch: {resp.cancel_reason}")
                    delay = 0.1
                    # one Change per revision, all its events together: a catalog change is
                    # never seen half-applied, nor its revision before its events; one this
                    # replica committed comes without them (the catalog has them already)
                    groups: dict[int, list[Event]] = {}
                    own = self._own
                    for ev in resp.events:
                        rev = ev.kv.mod_revision
                        events = groups.get(rev)
                        if events is None:
                            events = groups[rev] = []
                        if rev in own:
                            continue
                        got = self._event(ev)
                        if got is not None:
                            events.append(got)
                    for rev, events in groups.items():
                        self._passed(rev)
                        yield Change(rev, events)
                        start = rev + 1
                    if not resp.events and not resp.created:
                        start = max(start, resp.header.revision + 1)
                        self._passed(resp.header.revision)
                        yield Change(resp.header.revision)  # progress: nothing more up to here
            except (grpc.aio.AioRpcError, StoreError) as err:
                log.warning("following etcd broke (%s): again in %.1fs", _why(err), delay)
                self._next_endpoint(at)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if ask is not None:
                    ask.cancel()
                if call is not None:
                    call.cancel()
                if channel is not None:
                    self._unuse(channel)

    def _passed(self, revision: int) -> None:
        """The feed has passed `revision`: this replica's commits up to it are behind."""
        self._followed = max(self._followed, revision)
        if self._own:
            self._own = {r for r in self._own if r > revision}

    async def _ask_progress(self, call: Any) -> None:
        """Every second, ask etcd how far the watch is (it answers once it sent all up to
        there): the catalog's revision follows etcd's even while the prefix is quiet, so a
        watch resumed here from another replica finds this one as far along."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await call.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress_wanted.wait(), PROGRESS_EVERY)
                self._progress_wanted.clear()

    async def current_revision(self) -> int:
        resp = await self._rpc(
            rpc.KVStub, "Range", rpc.RangeRequest(key=self._rev, count_only=True)
        )
        self._progress_wanted.set()
        return int(resp.header.revision)

    async def publish_heartbeats(self, replica: str, beats: dict[str, float]) -> None:
        put = rpc.PutRequest(key=self._beat + replica.encode(), value=msgspec.json.encode(beats))
        await self._rpc(rpc.KVStub, "Put", put)

    async def campaign(self, identity: str) -> None:
        """Take the leader key with a lease of our own, waiting while another holds it."""
        ttl = self.settings.lease_ttl
        while True:
            held = await self._rpc(rpc.KVStub, "Range", rpc.RangeRequest(key=self._leader))
            if held.kvs:  # another leads: its key goes with its lease; look again soon
                await asyncio.sleep(ttl / 6)
                continue
            grant = await self._rpc(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
            lease = int(grant.ID)
            absent = rpc.Compare(result=_EQUAL, target=_CREATE, key=self._leader, create_revision=0)
            take = rpc.PutRequest(key=self._leader, value=identity.encode(), lease=lease)
            req = rpc.TxnRequest(compare=[absent], success=[rpc.RequestOp(request_put=take)])
            if (await self._rpc(rpc.KVStub, "Txn", req)).succeeded:
                self._lease = lease
                self._renewed = time.monotonic()
                return
            await self._revoke(lease)  # another took it first

    async def _still_leading(self) -> bool:
        resp = await self._rpc(rpc.KVStub, "Range", rpc.RangeRequest(key=self._leader))
        return bool(resp.kvs) and resp.kvs[0].lease == self._lease != 0

    async def _renew(self, lease: int) -> int:
        """Renew the lease once: its TTL left (0: gone)."""

        async def renew(channel: grpc.aio.Channel, metadata: Metadata) -> int:
            call = rpc.LeaseStub(channel).LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                timeout=self.settings.lease_ttl / 2,
                metadata=metadata,
            )
            async for reply in call:
                return int(reply.TTL)
            return 0

        return await self._call(renew)

    async def keep_leading(self) -> None:
        """Renew the lease a few times per TTL; return once it is gone (expired, revoked,
        or not renewed in time: then another replica may lead already)."""
        ttl = self.settings.lease_ttl
        while self._lease:
            await asyncio.sleep(ttl / 4)
            try:
                left = await self._renew(self._lease)
            except StoreError as err:
                log.warning("renewing the leader's lease failed: %s", err)
                if time.monotonic() - self._renewed > ttl * 0.8:
                    self._lease = 0  # it may have run out at etcd: stop before another leads
                continue
            if left > 0:
                self._renewed = time.monotonic()
            else:
                self._lease = 0

    async def _revoke(self, lease: int) -> None:
        try:
            await self._rpc(rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))
        except StoreError as err:
            log.info("revoking lease %x: %s (it expires by itself)", lease, err)

    async def resign(self) -> None:
        lease, self._lease = self._lease, 0
        if lease:
            await self._revoke(lease)


def _why(err: Exception) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)
