"""The data path over TLS for real: a `fluidfed worker serve` process serving HTTPS with a
binding's certificate (made as the agent makes it, `agents.trust.data_tls`), FUSE sidecars
that trust the binding's CA or another one, blocks received in threads and through aiohttp,
and the serving certificate renewed under a running worker."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agents import trust
from devkit.local.cluster import free_port
from devkit.local.processes import SidecarProcess, WorkerProcess
from devkit.testing import NotYet, eventually_blocking
from fluidfed import errors, tls
from fluidfed.data import receive, workers
from tests.integration import sources
from tests.integration.test_datapath import (
    BLOCK,
    _block_of,
    _whole_blocks,
    auth,
    block_count,
    read_all,
    sidecar_config,
    worker_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
]

HOSTS = ["127.0.0.1"]  # the name the worker is reached by here (in a cluster: its DNS name)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sources.make_dataset(tmp_path_factory.mktemp("data"), count=40, seed=11)


def write_tls(directory: Path, got: trust.DataTLS) -> dict[str, str]:
    """The binding's files as its Secret puts them in a worker: the config's fields."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca_file": "ca.crt", "tls_cert_file": "tls.crt", "tls_key_file": "tls.key"}
    texts = {"ca_file": got.ca_cert, "tls_cert_file": got.cert, "tls_key_file": got.key}
    for field, name in files.items():
        tmp = directory / (name + ".tmp")
        tmp.write_text(texts[field])
        os.replace(tmp, directory / name)  # as a Secret volume swaps its files
    return {field: str(directory / name) for field, name in files.items()}


@pytest.fixture
def binding_tls() -> trust.DataTLS:
    return trust.data_tls(None, HOSTS, time.time())


@pytest.fixture
def tls_worker(
    data: Path, tmp_path: Path, binding_tls: trust.DataTLS
) -> Iterator[tuple[WorkerProcess, Path]]:
    root = tmp_path / "worker"
    w = WorkerProcess(root, {}, free_port(), secure=True)
    cfg = worker_config({"uri": f"file://{data}"}, [w.url])
    w.write_config(cfg | write_tls(root / "tls", binding_tls))
    w.start()
    yield w, root / "tls"
    w.stop(signal.SIGKILL)


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[Any]:
    made: list[SidecarProcess] = []

    def start(config: dict[str, Any]) -> SidecarProcess:
        name = f"s{len(made)}"
        sc = SidecarProcess(tmp_path / name, config, tmp_path / f"{name}-mnt")
        made.append(sc)
        return sc.start()

    yield start
    for sc in made:
        sc.close()


def worker_status(w: WorkerProcess, ca: Path) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(f"{w.url}/v1/status", headers=auth("agent"))
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        got: dict[str, Any] = json.load(r)
    return got


def served_certificate(w: WorkerProcess, ca: Path) -> bytes:
    """The certificate a new handshake with the worker gets (DER), verified by `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", w.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sidecars_read_a_tls_worker_through_the_bindings_ca_and_refuse_another_ca(
    data: Path,
    tmp_path: Path,
    tls_worker: tuple[WorkerProcess, Path],
    sidecars: Any,
) -> None:
    w, files = tls_worker
    want = sources.files(data)
    n = block_count(want)
    assert w.url.startswith("https://")
    ca = files / "ca.crt"
    # the first reader fills the worker, the second reads every block from it over TLS
    # (large files' blocks received in threads, small files' through aiohttp)
    for i in range(2):
        sc = sidecars(sidecar_config({"uri": f"file://{data}"}, [w.url], ca_file=str(ca)))
        read_all(sc.mountpoint, want)
        st = sc.status()["blocks"]
        assert st["worker_errors"] == 0 and st["ufs_reads"] == 0, st
        if i == 1:
            assert st["worker_hits"] == n, st
            # the threaded receive, over TLS (on rustls, the default), on connections kept
            # alive (one per block when reuse breaks)
            assert 1 <= st["connections"] <= 16 < st["worker_hits"], st
            assert st["connections_rustls"] == st["connections"], st
    hits = worker_status(w, ca)["hits"]
    assert hits >= n

    # a sidecar trusting another CA (another binding's, an attacker's worker) sends it
    # nothing: every block from the under storage, the right bytes all the same
    other = trust.data_tls(None, HOSTS, time.time())
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text(other.ca_cert)
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, [w.url], ca_file=str(other_ca)))
    read_all(sc.mountpoint, want)
    st = sc.status()["blocks"]
    assert st["worker_hits"] == 0 and st["worker_errors"] >= 1, st
    assert "CERTIFICATE_VERIFY_FAILED" in sc.log.read_text()
    assert worker_status(w, ca)["hits"] == hits  # no block left the worker for it

    # plain HTTP to its port gets no answer at all
    plain = urllib.request.Request(
        w.url.replace("https://", "http://") + "/v1/status", headers=auth("agent")
    )
    with pytest.raises(http.client.RemoteDisconnected):
        urllib.request.urlopen(plain, timeout=10)


def test_blocks_over_tls_in_a_thread_on_the_loop_and_through_aiohttp_and_a_wrong_ca_is_a_worker_error(
    data: Path, tls_worker: tuple[WorkerProcess, Path], binding_tls: trust.DataTLS
) -> None:
    w, _ = tls_worker
    want = sources.files(data)
    large = _whole_blocks(data)[0]  # received in a thread
    small = min(want, key=lambda k: (len(want[k]) == 0, len(want[k])))  # on the event loop
    assert 0 < len(want[small]) < workers.THREAD_FROM
    other = trust.data_tls(None, HOSTS, time.time())

    async def get(ca_pem: str, rel: str, conns_too: bool) -> tuple[workers.Fetched, int, int]:
        ctx = tls.trusting(ca_pem)
        ref, key = await _block_of(data, rel)
        conns = receive.Connections(tls=ctx) if conns_too else None
        try:
            async with aiohttp.ClientSession(
                headers=auth("reader"), connector=aiohttp.TCPConnector(ssl=ctx)
            ) as s:
                got = await workers.get_block(s, w.url, key, ref, 0, conns=conns)
                return got, (conns.opened if conns else 0), (conns.opened_on_loop if conns else 0)
        finally:
            if conns is not None:
                conns.close()

    for rel, conns_too, threads, loop in [
        (large, True, 1, 0),
        (small, True, 0, 1),
        (large, False, 0, 0),
    ]:
        got, opened, opened_on_loop = asyncio.run(get(binding_tls.ca_cert, rel, conns_too))
        assert bytes(got.data) == want[rel][:BLOCK]
        assert (opened, opened_on_loop) == (threads, loop)
        with pytest.raises(errors.WorkerError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(get(other.ca_cert, rel, conns_too))


def test_a_renewed_serving_certificate_is_served_without_a_restart_and_reads_go_on(
    data: Path,
    tls_worker: tuple[WorkerProcess, Path],
    binding_tls: trust.DataTLS,
    sidecars: Any,
) -> None:
    w, files = tls_worker
    ca = files / "ca.crt"
    want = sources.files(data)
    before = served_certificate(w, ca)
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, [w.url], ca_file=str(ca)))
    read_all(sc.mountpoint, want)

    renewed = trust.data_tls(binding_tls, HOSTS, time.time(), renew=True)
    assert renewed.ca_cert == binding_tls.ca_cert and renewed.cert != binding_tls.cert
    write_tls(files, renewed)
    pid = w.proc.pid if w.proc is not None else 0

    def new_one() -> Any:
        der = served_certificate(w, ca)
        return der if der != before else NotYet("still the old certificate")

    eventually_blocking(new_one, "the worker serving the renewed certificate", timeout=20)
    assert w.proc is not None and w.proc.pid == pid and w.proc.poll() is None
    # a sidecar started now reads every block from the worker through the new certificate
    later = sidecars(sidecar_config({"uri": f"file://{data}"}, [w.url], ca_file=str(ca)))
    read_all(later.mountpoint, want)
    st = later.status()["blocks"]
    assert st["worker_hits"] == block_count(want) and st["worker_errors"] == 0, st


def test_a_stalled_tls_worker_is_a_worker_error_in_time_not_a_hung_thread(
    tmp_path: Path, binding_tls: trust.DataTLS
) -> None:
    """A worker's node gone without a reset: one listener accepts and never shakes hands,
    another shakes hands and never answers. The threaded receive gives up within its
    timeout either way (over a blocking socket `ssl` waited for ever)."""
    files = write_tls(tmp_path / "tls", binding_tls)
    server_ctx = tls.server_context(files["tls_cert_file"], files["tls_key_file"])
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve(listener: socket.socket, handshake: bool) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if handshake:
                conn = server_ctx.wrap_socket(conn, server_side=True)
            held.append(conn)  # open, silent

    listeners = []
    for handshake in (False, True):
        ls = socket.create_server(("127.0.0.1", 0))
        listeners.append(ls)
        threading.Thread(target=serve, args=(ls, handshake), daemon=True).start()

    async def get(port: int) -> None:
        conns = receive.Connections(tls=tls.trusting(binding_tls.ca_cert))
        try:
            url = f"https://127.0.0.1:{port}/v1/blocks/{'0' * 32}"
            await asyncio.wait_for(conns.get(url, {}, {}, 1.0), 30)
        finally:
            conns.close()

    try:
        for ls in listeners:
            with pytest.raises(errors.WorkerError, match=r"timed out|no answer in time"):
                asyncio.run(get(ls.getsockname()[1]))
    finally:
        stop.set()
        for s in [*listeners, *held]:
            s.close()


def test_a_running_sidecar_takes_the_workers_ca_when_its_config_names_one_later(
    data: Path, tls_worker: tuple[WorkerProcess, Path], sidecars: Any
) -> None:
    """An agent upgraded to TLS rewrites sidecar.json (https workers, `ca_file`): a sidecar
    already running trusts that CA from its next reload, without a restart."""
    w, files = tls_worker
    want = sources.files(data)
    first = sorted(want)[0]
    sc = sidecars(sidecar_config({"uri": f"file://{data}"}, [w.url]))  # no ca_file yet
    assert (sc.mountpoint / first).read_bytes() == want[first]
    before = sc.status()["blocks"]
    assert before["worker_errors"] >= 1 and before["worker_hits"] == 0  # not trusted
    cfg = sidecar_config({"uri": f"file://{data}"}, [w.url], ca_file=str(files / "ca.crt"))
    sc.config_path.write_text(json.dumps(cfg))
    sc.reload()

    def trusted() -> Any:
        log = sc.log.read_text()
        return True if "the workers' CA now from" in log else NotYet(log[-500:])

    eventually_blocking(trusted, "the sidecar taking the workers' CA", timeout=20)
    read_all(sc.mountpoint, want)
    after = sc.status()["blocks"]
    assert after["worker_hits"] + after["worker_misses"] > 0, after
    assert after["worker_errors"] == before["worker_errors"], after


def test_a_warm_up_over_tls_as_the_agent_asks_it(
    data: Path, tls_worker: tuple[WorkerProcess, Path], binding_tls: trust.DataTLS
) -> None:
    """The agent's warm-up client (`tls.trusting` the binding's CA, its agent token) starts
    and follows a load on an https worker, which pulls every block; with another CA the
    start is refused before any token is sent."""
    w, _ = tls_worker
    n = block_count(sources.files(data))
    other = trust.data_tls(None, HOSTS, time.time())

    async def load(ca_pem: str) -> Any:
        async with aiohttp.ClientSession(
            headers=auth("agent"), connector=aiohttp.TCPConnector(ssl=tls.trusting(ca_pem))
        ) as s:
            await workers.start_load(s, w.url, "", [w.url])
            for _ in range(600):
                got = await workers.load_progress(s, w.url)
                if got.state != "running":
                    return got
                await asyncio.sleep(0.1)
            raise AssertionError("the load did not finish")

    with pytest.raises(errors.WorkerError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(load(other.ca_cert))
    got = asyncio.run(load(binding_tls.ca_cert))
    assert (got.state, got.blocks, got.done, got.cached, got.errors) == ("done", n, n, n, 0), got
