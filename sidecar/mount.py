"""`fluidfed sidecar mount`: list the dataset, mount it, say when it answers, keep the
listing fresh, and unmount cleanly on SIGTERM (also with files open: the kernel detaches
the mount and the last reader gets EIO rather than a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pyfuse3.asyncio
from aiohttp import web

from fluidfed import config, errors, names, telemetry, tls
from fluidfed.data import answers, credentials, heap, ufs
from fluidfed.data.instruments import DataPathInstruments
from fluidfed.data.layout import SidecarConfig
from fluidfed.data.store import BlockStore
from sidecar import fusesession, peers
from sidecar.fs import DatasetFS
from sidecar.reader import BlockReader
from sidecar.tree import Listed, Plan, Tree

log = logging.getLogger("fluidfed.sidecar")


# The kernel's read-ahead for the mount: one full-size FUSE request (1 MiB, libfuse 3's
# largest) ahead of the reader. The sidecar fetches whole blocks `readahead` blocks ahead
# itself; a deeper kernel window (20 MiB was tried) only queues more requests on the event
# loop and made warm sequential reads slower (README, "Measured design decisions").
KERNEL_READAHEAD_KIB = 1024
# a disk tier of the sidecar's own (mounted by hand where no cache worker runs): blocks wait
# for their files in memory up to this many bytes, the READ answered meanwhile, instead of
# each READ of a first read waiting for its block's write ...
WRITE_BEHIND = 64 * 2**20
# ... and the blocks of more than a piece it reads from its files stay at hand for the next
# READs of each, and for those the read-ahead loaded them for, up to this many bytes (mapped
# from the page cache where they lie there or are read into it in huge folios, else
# copies in the sidecar's memory), instead of each READ reading its block's file again
# (`BlockStore`'s `hold`; figures: README, the sidecar's own disk tier)
HOLD = 64 * 2**20
STORED_WITHIN = 10.0  # seconds an unmount waits for the blocks still to be written


def tune_readahead(mountpoint: str, kib: int) -> int | None:
    """Set the mount's read-ahead (its backing device info; the default is 128 KiB) so the
    kernel asks for full-size reads. Needs root; best effort."""
    dev = os.stat(mountpoint).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        path.write_text(str(kib))
        return int(path.read_text())
    except OSError as err:
        log.info("cannot raise read-ahead (%s): %s", path, err)
        return None


def clear_dead_mount(path: str) -> bool:
    """A sidecar killed without unmounting leaves its FUSE mount behind, dead ("transport
    endpoint is not connected"); its restarted self must take it away, or the dead mount
    outlives the pod and keeps it Terminating. Any FUSE mount at our mountpoint before we
    mount is such a leftover. Lazily: a reader still holding it gets errors, not a hang."""
    target = os.path.abspath(path)
    try:
        with open("/proc/self/mounts") as f:
            left = [
                line.split()[2]
                for line in f
                if len(line.split()) > 2
                and line.split()[1] == target
                and line.split()[2].startswith("fuse")
            ]
    except OSError:
        return False
    if not left:
        return False
    log.warning("clearing a FUSE mount left at %s (the sidecar before this one died)", target)
    for cmd in (["fusermount3", "-u", "-z", target], ["umount", "-l", target]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, check=False).returncode == 0:
            return True
    log.error("could not unmount what is left at %s: mounting over it", target)
    return False


class Sidecar:
    def __init__(
        self,
        cfg: SidecarConfig,
        mountpoint: str,
        *,
        ready_file: str = "",
        cache_dir: Path | None = None,
        allow_other: bool | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_file = config.Watched(config_path, SidecarConfig) if config_path else None
        self.mountpoint = os.path.abspath(mountpoint)
        self.ready_file = ready_file
        self.cache_dir = cache_dir
        self.allow_other = os.geteuid() == 0 if allow_other is None else allow_other
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.tree = Tree()
        self._shadowed = 0  # objects a directory of the same name hid in the last listing
        self.readers = [ufs.open_ufs(m) for m in cfg.mounts]
        self.session: aiohttp.ClientSession | None = None
        self.reader: BlockReader | None = None
        self.fs: DatasetFS | None = None
        self.fuse: fusesession.Session | None = None
        self.listing_error = ""
        self.workers_override: list[str] | None = None  # --worker flags win over the file
        # the reader token the cache workers ask for; read again when the file changes
        self.credentials = (
            credentials.Watched(Path(cfg.credentials_file)) if cfg.credentials_file else None
        )
        # the CA https workers' certificates chain to (the binding's), read again on change;
        # without one the system's roots, in a context of ours all the same, so that a
        # binding's CA named later (an agent turning TLS on) joins what is in use
        self.trusted = tls.Trusted(cfg.ca_file) if cfg.ca_file else None
        self.tls_context = (
            self.trusted.context if self.trusted is not None else ssl.create_default_context()
        )

    def _tls(self) -> ssl.SSLContext:
        """How https workers are verified: the binding's CA, else the system's roots."""
        return self.tls_context

    def token(self) -> str:
        return self.credentials.current.token if self.credentials is not None else ""

    def _auth_headers(self) -> dict[str, str]:
        token = self.token()
        return credentials.authorization(token) if token else {}

    async def _first_listing(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                files = await ufs.list_files(self.cfg.mounts, self.readers, self.cfg.sub_path)
                self._take(self.tree.plan(files))
                self.listing_error = ""
                return
            except errors.UFSError as err:
                self.listing_error = str(err)
                log.warning(
                    "listing %s failed (retrying in %.1fs): %s", self.cfg.dataset, delay, err
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stop.wait()
            delay = min(delay * 2, 10.0)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.metadata_ttl)
            try:
                files = await ufs.list_files(self.cfg.mounts, self.readers, self.cfg.sub_path)
            except errors.UFSError as err:
                log.warning("refreshing the listing failed (keeping the last): %s", err)
                continue
            try:
                # (the walk over the listing in a thread: ~0.3 s at 200,000 files, while
                # the loop goes on answering from the tree as it is)
                listed = self._take(await asyncio.to_thread(self.tree.plan, files))
            except Exception:  # (a listing the tree cannot take: keep the last, go on)
                log.exception("taking the new listing failed (keeping the last)")
                continue
            if self.fuse is not None:
                try:
                    await asyncio.to_thread(self._invalidate, self.fuse, listed)
                except Exception:  # (the next listing tries again: keep refreshing)
                    log.exception("telling the kernel of a new listing failed")

    def _take(self, plan: Plan) -> Listed:
        """Take a planned listing into the tree, saying once which objects a directory of
        the same name hides."""
        if len(plan.shadowed) != self._shadowed:
            self._shadowed = len(plan.shadowed)
            if plan.shadowed:
                log.warning(
                    "%d object(s) of %s are named as a directory is (first: %r): the "
                    "directory is shown, not the object",
                    len(plan.shadowed),
                    self.cfg.dataset,
                    plan.shadowed[0],
                )
        return self.tree.apply(plan)

    @staticmethod
    def _invalidate(fuse: fusesession.Session, listed: Listed) -> None:
        """Tell the kernel what a new listing changed (blocking: in a thread): the pages of
        changed files (and only those) dropped, departed names forgotten."""
        for ino in listed.changed:
            with contextlib.suppress(OSError):
                fuse.invalidate_inode(ino)
        for parent, name in listed.departed:
            with contextlib.suppress(OSError):
                fuse.invalidate_entry(parent, os.fsencode(name))

    def reload(self) -> None:
        """Take the cache workers from the config file again (the agent rewrites it when
        the workers scale); the rest of the config applies to the next mount."""
        if self.credentials is not None and self.credentials.changed() is not None:
            if self.session is not None:  # the next requests carry the new token
                self.session.headers.update(self._auth_headers())
            log.info("reader token reloaded")
        if self.trusted is not None and self.trusted.reload():
            log.info("the workers' CA reloaded")
        if self.config_file is None or self.reader is None:
            return
        cfg = self.config_file.changed()
        if cfg is not None and cfg.ca_file and self.trusted is None:
            # the agent turned the workers' TLS on (an upgrade): trust their CA from now
            try:
                self.trusted = tls.Trusted(cfg.ca_file, context=self.tls_context)
                self.reader.trust_changed()
                log.info("the workers' CA now from %s", cfg.ca_file)
            except errors.ConfigError as err:
                log.warning("the workers' CA: %s (keeping the system's roots)", err)
        if cfg is not None and self.workers_override is None:
            self.reader.workers = cfg.workers.urls()
            log.info("cache workers now %s", self.reader.workers)

    async def _reload_loop(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload()

    @staticmethod
    async def _keep_free(store: BlockStore, interval: float = 2.0) -> None:
        """Give back what another tenant of the disk tier's filesystem took below its floor
        (`BlockStore.keep_free`), as a cache worker does between its reports."""
        while True:
            await asyncio.sleep(interval)
            store.keep_free()

    async def _watch_peers(self, interval: float = 1.0) -> None:
        watch = peers.PeerWatch()
        me = os.getpid()
        while True:
            if watch.gone(peers.others(peers.process_table(), me)):
                log.info("the app containers have finished: unmounting")
                self.stop.set()
                return
            await asyncio.sleep(interval)

    def _instrument(self, store: BlockStore) -> None:
        cfg, fs, reader = self.cfg, self.fs, self.reader
        assert fs is not None and reader is not None
        meter = telemetry.setup(
            names.SIDECAR_SERVICE,
            attributes={
                names.ATTR_DATASET: cfg.dataset,
                names.ATTR_CLUSTER: cfg.cluster,
                "k8s.namespace.name": cfg.namespace,
            },
            otlp_default=cfg.agent,
            token=self.token,
            ca_file=cfg.ca_file,
        )
        st = reader.stats
        worker = ((names.ATTR_SOURCE, "worker"),)
        ufs_src = ((names.ATTR_SOURCE, "ufs"),)
        inst = DataPathInstruments(
            meter,
            store,
            read_bytes=lambda: {(): fs.bytes_served},
            reads=lambda: {(): fs.reads},
            source_hits=lambda: {worker: st.worker_hits},
            source_misses=lambda: {worker: st.worker_misses, ufs_src: st.ufs_reads},
            ufs_bytes=lambda: st.bytes,
            ufs_errors=lambda: st.ufs_errors,
        )
        fs.on_read = inst.duration.record

    def status(self) -> dict[str, Any]:
        r = self.reader
        if self.fuse is not None:
            self.fuse.settle()
        return {
            "dataset": self.cfg.dataset,
            "mountpoint": self.mountpoint,
            "ready": self.ready.is_set(),
            "files": len(self.tree.files),
            "bytes": self.tree.total_bytes(),
            "workers": r.workers if r else [],
            "reads": self.fs.reads if self.fs else 0,
            "bytes_read": self.fs.bytes_served if self.fs else 0,
            # of `reads`, those the native session answered by itself from blocks held there
            "reads_in_session": self.fs.reads_in_session if self.fs else 0,
            "fuse_opens": self.fuse.opens if self.fuse else "",
            "fuse_requests": self.fuse.requests() if self.fuse else {},
            "read_errors": self.fs.read_errors if self.fs else 0,
            "blocks": r.stats.__dict__ if r else {},
            # the native session's replying threads could not ask which pages of a mapped
            # worker's file are in the page cache: they fault in what they check instead
            "cachestat_refused": self.fuse.cachestat_refused() if self.fuse else False,
            "cache": r.store.describe() if r else {},
            "heap_arenas": heap.arenas(),
            "listing_error": self.listing_error,
        }

    async def run(self, *, exit_with_peers: bool = False) -> None:
        if fusesession.engine() == "pyfuse3":
            pyfuse3.asyncio.enable()  # here, where the process starts serving: not at import
        store = await BlockStore(
            self.cfg.cache,
            root=self.cache_dir,
            write_behind=WRITE_BEHIND,
            hold=HOLD,
            lazy=True,  # (each READ's answer checked by its pieces as it is sent)
        ).open()
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.worker_timeout),
            connector=aiohttp.TCPConnector(limit=64, ssl=self._tls()),
            read_bufsize=2**22,  # blocks are megabytes: fewer, larger socket reads
            headers=self._auth_headers(),
        )
        if self.credentials is None and self.cfg.workers.urls():
            log.warning(
                "no credentials_file: the cache workers will refuse this sidecar (401) and "
                "it reads the under storage directly"
            )
        self.reader = BlockReader(self.cfg, self.readers, store, self.session, tls=self._tls())
        tasks: list[asyncio.Task[Any]] = []
        main: asyncio.Task[None] | None = None
        try:
            await self._first_listing()
            if self.stop.is_set():
                return
            self.fs = DatasetFS(
                self.tree,
                self.reader,
                ttl=self.cfg.metadata_ttl,
                read_timeout=self.cfg.read_timeout,
            )
            self._instrument(store)
            await asyncio.to_thread(clear_dead_mount, self.mountpoint)
            os.makedirs(self.mountpoint, exist_ok=True)
            options = {
                "ro",
                "default_permissions",
                "subtype=fluidfed",
                f"fsname=fluidfed:{self.cfg.dataset}",
            }
            if self.allow_other:
                options.add("allow_other")
            fuse = self.fuse = fusesession.mount(self.fs, self.mountpoint, options)
            main = asyncio.create_task(fuse.main())
            # ready once the mount answers a request through the kernel
            await asyncio.to_thread(os.stat, self.mountpoint)
            await asyncio.to_thread(tune_readahead, self.mountpoint, KERNEL_READAHEAD_KIB)
            self.ready.set()
            if self.ready_file:
                await asyncio.to_thread(Path(self.ready_file).write_text, self.mountpoint + "\n")
            tasks.append(asyncio.create_task(self._refresh()))
            fs = self.fs
            tasks.append(asyncio.create_task(heap.trim_loop(lambda: fs.bytes_served)))
            tasks.append(asyncio.create_task(self._reload_loop()))
            if store.on_disk:
                tasks.append(asyncio.create_task(self._keep_free(store)))
            if exit_with_peers:
                tasks.append(asyncio.create_task(self._watch_peers()))
            stop = asyncio.create_task(self.stop.wait())
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
        finally:
            self.ready.clear()
            if self.ready_file:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.ready_file)
            for t in tasks:
                t.cancel()
            if main is not None and not main.done():
                assert self.fuse is not None
                await self.fuse.terminate()
                try:
                    async with asyncio.timeout(self.cfg.read_timeout + 1):
                        await main
                except (TimeoutError, Exception) as err:
                    log.warning("FUSE loop did not stop cleanly: %r", err)
                    main.cancel()
            if self.fuse is not None:
                if self.fs is not None:
                    await self.fs.quiesce()
                self.fuse.close()
                self.fuse = None
            await self.reader.close()
            try:  # (the blocks written behind their readers: the next mount finds them)
                async with asyncio.timeout(STORED_WITHIN):
                    await store.stored()
            except TimeoutError:
                log.warning("blocks still being written after %.0f s: not kept", STORED_WITHIN)
            await self.session.close()
            for r in self.readers:
                r.close()
            await asyncio.to_thread(telemetry.shutdown)  # the last figures go out


async def serve(sc: Sidecar, *, status_host: str, status_port: int, exit_with_peers: bool) -> None:
    # first, before any thread exists: the status server's address lookup below starts
    # uvloop's thread pool, whose threads would get arenas of their own (heap.py)
    heap.tune()

    async def readyz(request: web.Request) -> web.Response:
        if sc.ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready {sc.listing_error}\n")

    def refused(request: web.Request) -> web.Response | None:
        """401 unless the request carries this sidecar's own token, where it has one: its
        figures name the dataset, its mount and its workers, and in a pod that shares the
        node's network (Fluid's FUSE pods may) its loopback is the node's."""
        token = sc.token()
        if not token:
            return None
        try:
            given = credentials.bearer(request.headers.get(credentials.HEADER))
        except credentials.Refused:
            given = ""
        # (bytes as they came: a header of other than UTF-8 is a refusal, not an error)
        if hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
        ):
            return None
        return answers.answer(
            401, "send this sidecar's token: 'Authorization: Bearer <token>'", realm="fluidfed"
        )

    async def status(request: web.Request) -> web.Response:
        return refused(request) or web.json_response(sc.status())

    async def metrics(request: web.Request) -> web.Response:
        return refused(request) or await telemetry.metrics_endpoint(request)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, status_host, status_port, reuse_address=True)
    await site.start()
    port = status_port
    for addr in runner.addresses:
        port = int(addr[1])
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sc.stop.set)
    loop.add_signal_handler(signal.SIGHUP, sc.reload)
    run = asyncio.create_task(sc.run(exit_with_peers=exit_with_peers))
    ready = asyncio.create_task(sc.ready.wait())
    try:
        await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            print(
                f"fluidfed sidecar: {sc.cfg.dataset} mounted at {sc.mountpoint} "
                f"({len(sc.tree.files)} files; status http://{status_host}:{port})",
                flush=True,
            )
        await run
    finally:
        ready.cancel()
        print("fluidfed sidecar: unmounted", file=sys.stderr, flush=True)
        await runner.cleanup()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
