"""The mount's kernel read-ahead, by what the sidecar reads from."""

from __future__ import annotations

from fluidfed.data.layout import Peers, SidecarConfig
from fluidfed.models import Mount
from sidecar.mount import KERNEL_READAHEAD_KIB, WITH_WORKERS_READAHEAD_KIB, kernel_readahead_kib


def config(workers: Peers) -> SidecarConfig:
    return SidecarConfig(dataset="d", mounts=[Mount(uri="file:///data")], workers=workers)


def test_the_read_ahead_is_deeper_with_cache_workers() -> None:
    assert kernel_readahead_kib(config(Peers())) == KERNEL_READAHEAD_KIB == 1024
    listed = Peers(endpoints=["http://127.0.0.1:7070"])
    assert kernel_readahead_kib(config(listed)) == WITH_WORKERS_READAHEAD_KIB == 4096
    pods = Peers(statefulset="fluidfed-d-cache", service="fluidfed-d-cache", replicas=2)
    assert kernel_readahead_kib(config(pods)) == WITH_WORKERS_READAHEAD_KIB
    # a StatefulSet of no pods is no workers: the sidecar reads the under storage itself
    assert kernel_readahead_kib(config(Peers(statefulset="s", service="s"))) == 1024
