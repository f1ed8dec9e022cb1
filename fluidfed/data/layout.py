"""How a dataset's mounts lay out as one tree, and the data-path configuration files.

A dataset with one mount shows it at its root; with several, each at `/<name>` unless the
mount gives a `path`. The sidecar shows the tree below the access entry's sub-path. Pure.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from urllib.parse import urlsplit

import msgspec

from fluidfed import validation
from fluidfed.data import blocks
from fluidfed.errors import Problem
from fluidfed.models import CacheSpec, CacheTier, Dataset, Mount, Wire, _bytes


def mount_point(m: Mount, count: int) -> str:
    """Where mount `m` (one of `count`) appears in the dataset: "/" or "/a/b"."""
    return posixpath.normpath("/" + (m.path or (m.name if count > 1 else "")).lstrip("/"))


def dataset_path(mounts: Sequence[Mount], mount: int, key: str) -> str:
    """Where object `key` of mount number `mount` appears in the dataset: "/a/b". A key's
    leading '/' is dropped, as the reads drop it (joined whole, it would discard the mount
    point: a worker checked a reader's sub-path against another place than it read)."""
    here = mount_point(mounts[mount], len(mounts))
    return posixpath.normpath(posixpath.join(here, key.lstrip("/")))


class FileRef(msgspec.Struct, frozen=True):
    """A file of the dataset: which mount, the object's path in it, what it is now."""

    mount: int
    key: str
    size: int
    mtime: float = 0.0
    version: str = ""

    def block_key(self, dataset: str, block_size: int, index: int) -> str:
        return blocks.block_key(dataset, self.mount, self.key, self.version, block_size, index)


def files(
    mounts: Sequence[Mount],
    listings: Sequence[Sequence[tuple[str, int, float, str]]],
    sub_path: str = "",
) -> dict[str, FileRef]:
    """Dataset path (relative to `sub_path`, no leading slash) -> file, from each mount's
    listing of (object path, size, mtime, etag)."""
    base = posixpath.normpath("/" + sub_path.strip("/"))
    out: dict[str, FileRef] = {}
    for i, listing in enumerate(listings):
        for key, size, mtime, etag in listing:
            full = dataset_path(mounts, i, key)
            if base != "/":
                if not full.startswith(base + "/"):
                    continue
                rel = full[len(base) + 1 :]
            else:
                rel = full.lstrip("/")
            if rel:
                version = blocks.version_of(size, mtime, etag)
                out[rel] = FileRef(mount=i, key=key, size=size, mtime=mtime, version=version)
    return out


def directories(paths: Sequence[str] | dict[str, FileRef]) -> dict[str, list[str]]:
    """Directory ("" is the root) -> sorted names of its children (files and directories).
    A path's ancestors are walked up only to the first one already known (its own are
    then known too): one lookup for most files, not one per level (200,000 files three
    levels deep: 577 -> ~190 ms on the sidecar's event loop; a refresh runs it in a
    thread since)."""
    children: dict[str, set[str]] = {"": set()}
    for p in paths:
        parent, name = posixpath.split(p)
        while (known := children.get(parent)) is None:
            children[parent] = {name}
            parent, name = posixpath.split(parent)
        known.add(name)
    return {d: sorted(names) for d, names in children.items()}


# --- the configuration files the agent writes for sidecars and workers -----------------


class Peers(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The cluster's cache workers: an explicit list of URLs, or the StatefulSet's pods
    behind its headless Service (`<scheme>://<statefulset>-<i>.<service>:<port>`)."""

    endpoints: list[str] = []
    statefulset: str = ""
    service: str = ""
    port: int = 7070
    replicas: int = 0
    scheme: str = "http"  # https: the workers serve TLS (the agent's do)

    def urls(self) -> list[str]:
        if self.endpoints:
            return [e.rstrip("/") for e in self.endpoints]
        return [
            f"{self.scheme}://{self.statefulset}-{i}.{self.service}:{self.port}"
            for i in range(self.replicas)
        ]


def _default_sidecar_cache() -> list[CacheTier]:
    return [CacheTier(medium="MEM", quota=_bytes(128 * 2**20))]


class SidecarConfig(Wire):
    dataset: str
    mounts: list[Mount]
    cluster: str = ""
    namespace: str = ""
    sub_path: str = ""
    read_only: bool = True
    block_size: int = 4 * 2**20
    workers: Peers = Peers()
    cache: list[CacheTier] = msgspec.field(default_factory=_default_sidecar_cache)
    metadata_ttl: float = 60.0  # seconds the kernel and the sidecar trust a listing
    read_timeout: float = 10.0  # a block not read within this gives EIO
    worker_timeout: float = 3.0  # a worker not answering within this: read the UFS
    readahead: int = 4  # blocks fetched ahead of a sequential reader
    agent: str = ""  # the agent's API: OTLP metrics go to <agent>/v1/metrics
    # this sidecar's reader token (`fluidfed.data.credentials`), a file the agent's Secret
    # puts there; read again when it changes
    credentials_file: str = ""
    # the CA that https workers' certificates must chain to (the binding's own, from the
    # same Secret; "": the system's trust store)
    ca_file: str = ""
    # read a worker's disk blocks from its files when they are visible here (same node)
    short_circuit: bool = True


class WorkerConfig(Wire):
    dataset: str
    mounts: list[Mount]
    block_size: int = 4 * 2**20
    port: int = 7070
    tiers: list[CacheTier] = msgspec.field(default_factory=_default_sidecar_cache)
    workers: Peers = Peers()
    read_timeout: float = 30.0
    fetch_concurrency: int = 16
    agent: str = ""  # the agent's API: the worker registers there and reports its blocks
    report_interval: float = 2.0
    # the binding's keys (`fluidfed.data.credentials`), a file the agent's Secret puts
    # there; read again when it changes. Required: a worker answers no one without it
    credentials_file: str = ""
    # serve HTTPS with this certificate and key (read again when they change), and verify
    # https peers against `ca_file` ("": the system's trust store)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    ca_file: str = ""
    # plain HTTP (no tls_cert_file) on an address beyond loopback: refused unless this is
    # set, where the network encrypts by other means (the agent sets it where its
    # operator turned the data path's TLS off: `data_tls`)
    plain_http: bool = False


def own_tiers(tiers: list[CacheTier], pod: str) -> list[CacheTier]:
    """The tiers with `{pod}` in their paths made this worker's pod name: the workers of a
    StatefulSet share the node's cache directory, each in its own directory below it."""
    return [
        msgspec.structs.replace(t, path=t.path.replace("{pod}", pod)) if "{pod}" in t.path else t
        for t in tiers
    ]


def check_config(cfg: SidecarConfig | WorkerConfig, *, rooted: bool = False) -> list[Problem]:
    """The rules of a sidecar's or a worker's settings that their types cannot say (the
    dataset's own rules for its name and mounts, the sub-path, the peers, the agent).
    `rooted`: a sidecar given --cache-dir, where disk tiers without a path keep their
    blocks (a worker always has one: its --cache-dir, /cache by default)."""
    rooted = rooted or isinstance(cfg, WorkerConfig)
    as_dataset = Dataset(name=cfg.dataset, mounts=cfg.mounts)
    problems = [
        Problem(p.message, path=p.path.removeprefix("dataset."))
        for p in validation.check_dataset(as_dataset, new=False)
        if p.path.startswith(("dataset.name", "dataset.mounts"))
    ]
    tiers = cfg.cache if isinstance(cfg, SidecarConfig) else cfg.tiers
    field = "cache" if isinstance(cfg, SidecarConfig) else "tiers"
    if isinstance(cfg, WorkerConfig):
        # a worker's file may name its disk tiers relative to itself, as its other paths
        tiers = [
            msgspec.structs.replace(t, path="/" + t.path) if t.path[:1] not in ("", "/") else t
            for t in tiers
        ]
    spec = CacheSpec(tiers=tiers, block_size=_bytes(cfg.block_size))
    for p in validation.check_cache(spec, "", new=False, rooted=rooted):
        problems.append(Problem(p.message, path=p.path.replace(".tiers", field, 1).lstrip(".")))
    if isinstance(cfg, SidecarConfig):
        if cfg.sub_path.startswith("/") or ".." in cfg.sub_path.split("/"):
            problems.append(
                Problem(
                    "sub_path is a directory of the dataset: relative, without '..'",
                    path="sub_path",
                )
            )
        for name in ("metadata_ttl", "read_timeout", "worker_timeout"):
            if not _positive(getattr(cfg, name)):
                problems.append(Problem(f"{name} must be above zero seconds", path=name))
        if cfg.readahead < 0:
            problems.append(Problem("readahead is a number of blocks: 0 or more", path="readahead"))
    else:
        for name in ("read_timeout", "report_interval"):
            if not _positive(getattr(cfg, name)):  # (0: a loop that calls the agent on end)
                problems.append(Problem(f"{name} must be above zero seconds", path=name))
        if cfg.fetch_concurrency < 1:
            problems.append(
                Problem("fetch_concurrency must be 1 or more", path="fetch_concurrency")
            )
        if not 0 < cfg.port < 65536:
            problems.append(Problem(f"port {cfg.port} is not a TCP port (1-65535)", path="port"))
        if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
            missing = "tls_key_file" if cfg.tls_cert_file else "tls_cert_file"
            problems.append(
                Problem("serving TLS needs both tls_cert_file and tls_key_file", path=missing)
            )
        # the workers of a binding serve alike: one serving TLS reaches its peers over it
        serves = "https" if cfg.tls_cert_file else "http"
        if cfg.workers.statefulset and cfg.workers.scheme != serves:
            problems.append(
                Problem(
                    f"this worker serves {serves} ({'with' if cfg.tls_cert_file else 'without'} "
                    f"tls_cert_file) but names its peers over {cfg.workers.scheme}",
                    path="workers.scheme",
                )
            )
        for i, url in enumerate(cfg.workers.endpoints):
            if urlsplit(url).scheme in ("http", "https") and urlsplit(url).scheme != serves:
                problems.append(
                    Problem(
                        f"this worker serves {serves} but names its peer {url!r}: the workers "
                        f"of a binding serve alike, write {serves}://",
                        path=f"workers.endpoints[{i}]",
                    )
                )
    if cfg.workers.scheme not in ("http", "https"):
        problems.append(
            Problem(f"scheme {cfg.workers.scheme!r} is not http or https", path="workers.scheme")
        )
    for i, url in enumerate(cfg.workers.endpoints):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(
                Problem(
                    f"{url!r} is not a worker URL (e.g. http://127.0.0.1:7070)",
                    path=f"workers.endpoints[{i}]",
                )
            )
    if cfg.workers.statefulset and not cfg.workers.service:
        problems.append(
            Problem("a statefulset's workers need its headless service", path="workers.service")
        )
    if cfg.agent and urlsplit(cfg.agent).scheme not in ("http", "https"):
        problems.append(Problem(f"agent {cfg.agent!r} is not an http(s) URL", path="agent"))
    elif cfg.agent and (bad := validation.url_host_problem(cfg.agent)):
        problems.append(Problem(f"agent: {bad}", path="agent"))
    return problems


def _positive(seconds: float) -> bool:
    """Above zero and finite (NaN passes `<= 0`: a timeout of NaN fires at once)."""
    return math.isfinite(seconds) and seconds > 0
