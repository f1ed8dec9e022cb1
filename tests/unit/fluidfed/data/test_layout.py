"""The dataset layout: mounts placed in one tree, and the cache workers a reader asks."""

from __future__ import annotations

import posixpath
import random

from fluidfed.data import layout
from fluidfed.models import Mount


def test_layout_places_mounts_and_applies_the_sub_path() -> None:
    mounts = [Mount(uri="s3://a/x", name="imgs"), Mount(uri="s3://b/y", name="labels")]
    listings = [
        [("train/1.jpg", 10, 1.0, "e1"), ("val/2.jpg", 5, 1.0, "e2")],
        [("all.csv", 3, 2.0, "")],
    ]
    everything = layout.files(mounts, listings)
    assert sorted(everything) == ["imgs/train/1.jpg", "imgs/val/2.jpg", "labels/all.csv"]
    assert everything["labels/all.csv"].mount == 1
    assert everything["imgs/train/1.jpg"].key == "train/1.jpg"
    sub = layout.files(mounts, listings, sub_path="/imgs/train/")
    assert list(sub) == ["1.jpg"]
    assert layout.directories(everything) == {
        "": ["imgs", "labels"],
        "imgs": ["train", "val"],
        "imgs/train": ["1.jpg"],
        "imgs/val": ["2.jpg"],
        "labels": ["all.csv"],
    }
    one = layout.files([Mount(uri="file:///d")], [[("a", 1, 0.0, "")]])
    assert list(one) == ["a"]


def test_directories_name_every_ancestor_once_whatever_the_order() -> None:
    """Each path's ancestors are walked only up to one already known: the same tree as
    walking every path to the root, for paths in any order and of any depth."""

    def every_level(paths: list[str]) -> dict[str, list[str]]:
        children: dict[str, set[str]] = {"": set()}
        for p in paths:
            parent, name = posixpath.split(p)
            while True:
                children.setdefault(parent, set()).add(name)
                if not parent:
                    break
                parent, name = posixpath.split(parent)
        return {d: sorted(names) for d, names in children.items()}

    rng = random.Random(7)
    for _ in range(50):
        paths = [
            "/".join(f"n{rng.randrange(4)}" for _ in range(rng.randrange(1, 6)))
            for _ in range(rng.randrange(1, 40))
        ]
        paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
        rng.shuffle(paths)
        assert layout.directories(paths) == every_level(paths)
    assert layout.directories([]) == {"": []}
    assert layout.directories(["a/b/c/d.txt", "a/x.txt"]) == {
        "": ["a"],
        "a": ["b", "x.txt"],
        "a/b": ["c"],
        "a/b/c": ["d.txt"],
    }


def test_peers_from_a_statefulset() -> None:
    p = layout.Peers(statefulset="fluidfed-x-cache", service="fluidfed-x-cache.ns.svc", replicas=2)
    assert p.urls() == [
        "http://fluidfed-x-cache-0.fluidfed-x-cache.ns.svc:7070",
        "http://fluidfed-x-cache-1.fluidfed-x-cache.ns.svc:7070",
    ]
    assert layout.Peers(endpoints=["http://a/"]).urls() == ["http://a"]
    tls = layout.Peers(statefulset="w", service="w.ns.svc", replicas=1, scheme="https")
    assert tls.urls() == ["https://w-0.w.ns.svc:7070"]


def test_a_sidecar_or_worker_config_is_checked_like_the_dataset_it_serves() -> None:
    from fluidfed.data.layout import Peers, SidecarConfig, WorkerConfig, check_config

    ok = SidecarConfig(dataset="imagenet", mounts=[Mount(uri="s3://b/p")])
    assert check_config(ok) == []
    bad = SidecarConfig(
        dataset="imagenet",
        mounts=[Mount(uri="s3://k:hunter2@b/p")],
        sub_path="../x",
        read_timeout=0,
        workers=Peers(endpoints=["127.0.0.1:7070"]),
    )
    got = {p.path: p.message for p in check_config(bad)}
    assert "carries credentials" in got["mounts[0].uri"] and "hunter2" not in got["mounts[0].uri"]
    assert "without '..'" in got["sub_path"]
    assert "above zero" in got["read_timeout"]
    assert "not a worker URL" in got["workers.endpoints[0]"]
    worker = WorkerConfig(dataset="imagenet", mounts=[Mount(uri="s3://b/p")], port=70000)
    assert "not a TCP port" in {p.path: p.message for p in check_config(worker)}["port"]
    half = WorkerConfig(
        dataset="imagenet",
        mounts=[Mount(uri="s3://b/p")],
        tls_cert_file="tls.crt",
        workers=Peers(scheme="ftp"),
    )
    got = {p.path: p.message for p in check_config(half)}
    assert "both tls_cert_file and tls_key_file" in got["tls_key_file"]
    assert "not http or https" in got["workers.scheme"]
    mixed = WorkerConfig(
        dataset="imagenet",
        mounts=[Mount(uri="s3://b/p")],
        tls_cert_file="tls.crt",
        tls_key_file="tls.key",
        workers=Peers(endpoints=["https://w0:7070", "http://w1:7070"]),
    )
    got = {p.path: p.message for p in check_config(mixed)}
    assert list(got) == ["workers.endpoints[1]"] and "write https://" in got["workers.endpoints[1]"]
    plain_peers = WorkerConfig(
        dataset="imagenet",
        mounts=[Mount(uri="s3://b/p")],
        workers=Peers(statefulset="w", service="w.ns.svc", replicas=2, scheme="https"),
    )
    got = {p.path: p.message for p in check_config(plain_peers)}
    assert "serves http (without tls_cert_file)" in got["workers.scheme"]


def test_a_worker_file_may_name_its_disk_tier_relative_to_itself() -> None:
    from fluidfed.data.layout import WorkerConfig, check_config
    from fluidfed.models import CacheTier
    from fluidfed.units import ByteSize

    def worker(path: str) -> WorkerConfig:
        tiers = [CacheTier(medium="SSD", quota=ByteSize(2**30), path=path)]
        return WorkerConfig(dataset="imagenet", mounts=[Mount(uri="s3://b/p")], tiers=tiers)

    assert check_config(worker(".fluidfed/worker-cache")) == []
    assert check_config(worker("/var/cache/fluidfed")) == []
    (up,) = check_config(worker("../elsewhere"))
    assert (up.path, "'..'" in up.message) == ("tiers[0].path", True)


def test_an_objects_leading_slash_keeps_it_under_its_mount() -> None:
    """An HTTP mount's manifest may list '/train/a.bin': joined whole to the mount point,
    the leading '/' discarded it (the file left its mount in the tree, and a worker
    checked a reader's sub-path against that other place)."""
    mounts = [Mount(uri="s3://b/p", name="pub"), Mount(uri="s3://b/q", name="priv")]
    assert layout.dataset_path(mounts, 1, "/pub/x.csv") == "/priv/pub/x.csv"
    assert layout.dataset_path(mounts, 1, "pub/x.csv") == "/priv/pub/x.csv"
    assert layout.dataset_path(mounts, 0, "./a/./b") == "/pub/a/b"


def test_a_data_path_config_refuses_what_would_spin_or_fail_every_read() -> None:
    from fluidfed.data.layout import SidecarConfig, WorkerConfig, check_config

    nan = float("nan")
    side = SidecarConfig(
        dataset="d",
        mounts=[Mount(uri="s3://b/p")],
        read_timeout=nan,  # (asyncio.timeout(nan) fires at once: every read EIO)
        readahead=-1,
        agent="https://",
    )
    got = {p.path: p.message for p in check_config(side)}
    assert set(got) == {"read_timeout", "readahead", "agent"}
    assert "names no host" in got["agent"]
    worker = WorkerConfig(
        dataset="d",
        mounts=[Mount(uri="s3://b/p")],
        read_timeout=0,
        report_interval=nan,
        fetch_concurrency=0,
    )
    got = {p.path: p.message for p in check_config(worker)}
    assert set(got) == {"read_timeout", "report_interval", "fetch_concurrency"}


def test_disk_tiers_without_a_path_pass_where_a_cache_root_keeps_them() -> None:
    """A worker always has a cache root (--cache-dir, /cache by default), a sidecar where
    it is given one: a tier without a path keeps its blocks there."""
    from fluidfed.data.layout import SidecarConfig, WorkerConfig, check_config
    from fluidfed.models import CacheTier
    from fluidfed.units import ByteSize

    ssd = [CacheTier(medium="SSD", quota=ByteSize(2**30))]
    worker = WorkerConfig(dataset="d", mounts=[Mount(uri="s3://b/p")], tiers=ssd)
    assert check_config(worker) == []
    side = SidecarConfig(dataset="d", mounts=[Mount(uri="s3://b/p")], cache=ssd)
    assert check_config(side, rooted=True) == []
    assert "needs a directory" in {p.path: p.message for p in check_config(side)}["cache[0].path"]
