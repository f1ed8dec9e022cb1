"""Fan-out of one dataset to N watching agents, against a bare HTTP fan-out baseline.

    python bench/hub_fanout.py [--agents 100 1000] [--rounds 5] [--burst 20] [--etcd]

For each N: a real hub process, N clusters registered, N simulated agents (each its own
HTTP connection and cluster token) watching their bindings. Then:

* latency: apply a dataset placed on all N clusters; time from the apply's acknowledgement
  until each agent has its binding (p50/p99 over rounds x N), and from the apply's request
  (`sent_*`: the commit included; the acknowledgement carries all N bindings, so at
  thousands of clusters some agents have theirs before it arrives);
* throughput: `burst` such datasets applied back to back (datasets/s, bindings/s);
* hub RSS after the run;
* CPU: the hub process's CPU seconds (user + system, from /proc) over the latency and
  burst phases, per delivered binding (`hub_cpu_us_per_binding`): robust to other work on
  the machine, unlike the wall-clock figures. The baseline server's CPU per delivered line
  is measured the same way (`cpu_vs_baseline`).

The simulated agents run on uvloop where installed, all in this process, on the same two
cores as the hub: their CPU per delivered binding (`client_cpu_us_per_binding`, this
process's, over the same phases) is reported beside the hub's, since with TLS on they
decrypt every event there too; `hub_busy` and `client_busy` are the share of one core each
side took over those phases (near 1: the side the latency waited on). Each N runs the hub
on plain HTTP and on HTTPS (`--self-signed`, clients verifying its CA), `--repeat` times
each in alternating order, medians reported: the `tls_vs_plain_*` ratios are the cost of
TLS on the fan-out (`--no-tls` skips it). The bare server runs over HTTPS as well
(`baseline_tls_*`): what TLS costs any HTTP watch here, server and watchers, the floor
under the hub's ratios. `--against DIR` runs the hub of another checkout (main's, say) in
the same alternation: `this_vs_against_*` are before/after ratios measured in one run.

`--etcd` also runs the hub on etcd, alternating with the SQLite hub: a 3-member etcd on
loopback (devkit/local/etcd.py), 2 hub replicas on it, agent i's first replica i mod 2 with
the other to fail over to, apply r sent to replica r mod 2. Its figures are `etcd_*`
(CPU: both replicas together, per delivered binding; RSS: the larger replica, and each;
`etcd_store_*`: etcd's three members), `etcd_vs_sqlite_*` the ratios to the SQLite hub of
the same run (`--etcd-only`: without it). `--profile DIR` records each hub with py-spy
(installed apart) over the measured phases. While measuring, the simulated agents' clients
are frozen out of this process's garbage collector (`gc.freeze`): a full collection over
thousands of them paused the process that timestamps every binding.

The baseline, measured in the same run with the same client process and connection count,
is a minimal aiohttp server (on uvloop, as the hub) that streams one line of a binding
event's size to N open responses when told to: the floor for any HTTP watch. The hub's
figures are reported beside it as ratios.

`--native` adds the same bare fan-out written in Go (bench/native_fanout/main.go, built with
`go build` into ~/.cache/fluidfed/bench): its TLS records are made by Go's crypto/tls, not by
Python's ssl, so `baseline_native_tls_vs_plain_*` is what TLS costs a fan-out on this
machine when no Python is in the way, and `baseline_native_tls_extra_us_per_line` the µs
TLS adds to each line there (against `tls_extra_us_per_binding`, the hub's).
Reference: Karmada reports P99 about 1 s to distribute a resource to 100 clusters.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

from devkit.local import paths
from devkit.local.etcd import EtcdCluster
from devkit.testing import HubProcess
from fluidfed import Client, errors
from fluidfed import tls as tls_setup
from fluidfed.models import Capabilities, Cluster, Dataset, KubeAccess, Mount, Placement

BASELINE_SERVER = textwrap.dedent(
    """
    import asyncio, ssl, sys
    from aiohttp import web
    queues = []
    async def watch(request):
        q = asyncio.Queue(); queues.append(q)
        resp = web.StreamResponse(); await resp.prepare(request)
        while True:
            await resp.write(await q.get())
    async def fire(request):
        line = (await request.read()) + b"\\n"
        for q in queues: q.put_nowait(line)
        return web.Response(text=str(len(queues)))
    app = web.Application(); app.router.add_get("/watch", watch); app.router.add_post("/fire", fire)
    ctx = None
    if len(sys.argv) > 2:  # certificate and key: HTTPS, as the hub's --self-signed
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    async def main():
        runner = web.AppRunner(app); await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx); await site.start()
        print(runner.addresses[0][1], flush=True); await asyncio.Event().wait()
    try:  # on uvloop, as the hub
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    """
)
LINE_BYTES = 250  # the size of a binding's event in the hub's watch, as the bench applies it


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
THIS_TREE = Path(__file__).resolve().parents[1]
DEADLINE_S = 300  # an agent that has not got its binding by then is a failed run


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


NATIVE_SOURCE = Path(__file__).with_name("native_fanout")


def native_server() -> str:
    """The Go fan-out server's binary, built once per version of its source (`go build`,
    the standard library only: no module to download)."""
    source = (NATIVE_SOURCE / "main.go").read_bytes() + (NATIVE_SOURCE / "go.mod").read_bytes()
    out = paths.cache_dir("bench", "FLUIDFED_BENCH_CACHE") / (
        "native_fanout-" + hashlib.sha256(source).hexdigest()[:12]
    )
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(out), "."], cwd=NATIVE_SOURCE, check=True)
    return str(out)


async def baseline(
    n: int, rounds: int, tls_dir: Path | None = None, *, native: bool = False
) -> tuple[list[float], float, float]:
    """Latencies of `rounds` fan-outs to `n` watchers, the server's CPU µs per line and
    this (the watchers') process's. With `tls_dir`, over HTTPS with a certificate made
    there as the hub's --self-signed makes its own, the watchers verifying it. `native`:
    the Go server instead of the aiohttp one."""
    argv = [native_server()] if native else [sys.executable, "-c", BASELINE_SERVER]
    ctx: ssl.SSLContext | bool = True
    if tls_dir is not None:
        made = tls_setup.self_signed(tls_dir, ("127.0.0.1",))
        argv += [str(made.cert_file), str(made.key_file)]
        ctx = tls_setup.client_context(tls_setup.ClientTLS(ca_file=str(made.ca_file)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{proc.stdout.readline().strip()}"
    got: dict[int, list[float]] = {}
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) for _ in range(n)]
    ready = asyncio.Event()
    connected = 0

    async def watcher(s: aiohttp.ClientSession) -> None:
        nonlocal connected
        async with s.get(url + "/watch", timeout=aiohttp.ClientTimeout(total=None)) as resp:
            connected += 1
            if connected == n:
                ready.set()
            async for line in resp.content:
                got.setdefault(int(line), []).append(time.monotonic())

    tasks = [asyncio.create_task(watcher(s)) for s in sessions]
    await ready.wait()
    await asyncio.sleep(0.2)
    gc.freeze()  # as in fanout(): the connections are not the garbage collector's work
    lat: list[float] = []
    cpu0 = cpu_s(proc.pid)
    client_cpu0 = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as ctl:
        for r in range(rounds):
            line = str(r).encode().ljust(LINE_BYTES - 1)
            async with ctl.post(url + "/fire", data=line) as resp:
                await resp.read()
                acked = time.monotonic()
            while len(got.get(r, [])) < n:
                await asyncio.sleep(0.002)
            lat += [t - acked for t in got[r]]
    cpu_us = (cpu_s(proc.pid) - cpu0) / (rounds * n) * 1e6
    client_cpu_us = (time.process_time() - client_cpu0) / (rounds * n) * 1e6
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in sessions:
        await s.close()
    gc.unfreeze()
    proc.terminate()
    proc.wait()
    return lat, cpu_us, client_cpu_us


async def baseline_run(n: int, rounds: int, tls: bool, native: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        lat, cpu_us, client_cpu_us = await baseline(
            n, rounds, Path(tmp) if tls else None, native=native
        )
    return {
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "cpu_us_per_line": cpu_us,
        "client_cpu_us_per_line": client_cpu_us,
    }


def _baseline_tls(
    runs: list[dict[str, float]], plain: dict[str, float], prefix: str = "baseline_"
) -> dict[str, float]:
    """The bare server over HTTPS against itself over HTTP: what TLS costs any HTTP watch
    on this machine (one TLS record per line, decrypted by the watchers in this process),
    the floor under the hub's `tls_vs_plain_*`."""
    if not runs:
        return {}
    got = _medians(runs)
    row = {f"{prefix}tls_{k}": round(v, 2) for k, v in got.items()}
    for k in got:
        row[f"{prefix}tls_vs_plain_{k}"] = round(got[k] / max(plain[k], 1e-3), 2)
    row[f"{prefix}tls_extra_us_per_line"] = round(
        got["cpu_us_per_line"] - plain["cpu_us_per_line"], 2
    )
    return row


def _config(tmp: Path, n: int) -> list[str]:
    """A hub configuration whose kept history holds a few applies to `n` clusters: one
    apply is n events, and at the default event_history (10,000) 10,000 agents would all
    be told 410 Gone (and relist) at every apply."""
    config = tmp / "hub.toml"
    config.write_text(f"[hub]\nevent_history = {max(10_000, 4 * n)}\n")
    return ["--config", str(config)]


async def hub_run(
    n: int, rounds: int, burst: int, *, tls: bool = False, tree: str = ""
) -> dict[str, float]:
    """One hub (of source tree `tree`, or this one) fanning out to `n` agents."""
    extra = ["--self-signed"] if tls else []
    with (
        tempfile.TemporaryDirectory() as tmp,
        HubProcess(
            Path(tmp) / "hub", extra=[*extra, *_config(Path(tmp), n)], env=_hub_env(tree)
        ) as hub,
    ):
        assert hub.proc is not None
        ca = str(Path(tmp) / "hub" / "tls" / "ca.crt") if tls else ""
        label = f"{'against' if tree else 'this'}-{'tls' if tls else 'plain'}"
        return await fanout(
            n, rounds, burst, [hub.url], hub.admin_token, [hub.proc.pid], ca, label=label
        )


PROFILE_DIR = ""  # --profile: py-spy records each hub process over the measured phases
_profiled = 0  # runs profiled so far: each its own files (repeats, modes)


def _profile(pids: list[int], name: str) -> list[subprocess.Popen[bytes]]:
    """py-spy (not a dependency of the project: installed apart) recording each process in
    `pids` into PROFILE_DIR as collapsed stacks, until `_stop_profiling`."""
    if not PROFILE_DIR:
        return []
    global _profiled
    _profiled += 1
    name = f"{name}-run{_profiled}"
    out = Path(PROFILE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                # native frames too: uvloop's and OpenSSL's share of a TLS hub
                *("py-spy", "record", "--pid", str(pid), "--rate", "50", "--format", "raw"),
                "--native",
                # (native stacks need the process stopped at each sample: a profiled
                # run's figures are for where the time goes, not for comparison)
                *("--output", str(out / f"{name}-hub{i}-{pid}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, pid in enumerate(pids)
    ]


def _stop_profiling(profilers: list[subprocess.Popen[bytes]]) -> None:
    for proc in profilers:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it recorded, then exits
    for proc in profilers:
        proc.wait(30)


def _hub_env(tree: str) -> dict[str, str]:
    # the hub imports from `tree` alone: not from the working directory, which `python -m`
    # puts first on the path, nor from where fluidfed happens to be installed
    return {"PYTHONPATH": tree or str(THIS_TREE), "PYTHONSAFEPATH": "1"}


async def etcd_run(n: int, rounds: int, burst: int, *, tree: str = "") -> dict[str, float]:
    """Two hub replicas (of source tree `tree`, or this one) on a 3-member etcd on loopback,
    fanning out to `n` agents split across them."""
    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(Path(tmp) / "etcd") as members:
        flags = [*_config(Path(tmp), n), "--store", members.store_url]
        # one data directory: the replicas share the admin token, as a Secret would give it
        hubs = [HubProcess(Path(tmp) / "hub", extra=flags, env=_hub_env(tree)) for _ in range(2)]
        try:
            for hub in hubs:
                hub.start(timeout=60)
            pids = [h.proc.pid for h in hubs if h.proc is not None]
            store_pids = tuple(p.pid for p in members.procs.values())
            urls = [h.url for h in hubs]
            label = f"{'against' if tree else 'this'}-etcd"
            return await fanout(
                n, rounds, burst, urls, hubs[0].admin_token, pids, store_pids=store_pids,
                label=label,
            )  # fmt: skip
        finally:
            for hub in hubs:
                hub.stop()


async def fanout(
    n: int,
    rounds: int,
    burst: int,
    urls: list[str],
    admin_token: str,
    hub_pids: list[int],
    ca: str = "",
    store_pids: tuple[int, ...] = (),
    label: str = "",
) -> dict[str, float]:
    """`n` simulated agents on the hub replicas at `urls`: agent i's first choice is replica
    i mod R, with the others to fail over to (as a real agent given every URL); apply r goes
    to replica r mod R. CPU and RSS are those of the processes `hub_pids` (and of the store's
    own, `store_pids`: etcd's members)."""

    def rotated(i: int) -> list[str]:
        at = i % len(urls)
        return urls[at:] + urls[:at]

    admins = [Client(rotated(i), admin_token, ca_file=ca) for i in range(len(urls))]
    admin = admins[0]
    try:
        sem = asyncio.Semaphore(32)

        async def reg(i: int) -> str:
            async with sem:
                spec = Cluster(
                    name=f"c{i:04d}",
                    kind="edge",
                    capabilities=Capabilities(privileged=True),
                    kubernetes=KubeAccess(in_cluster=True),
                )
                return (await admin.register_cluster(spec)).token

        t0 = time.monotonic()
        tokens = await asyncio.gather(*(reg(i) for i in range(n)))
        register_s = time.monotonic() - t0

        got: dict[str, list[float]] = {}
        ready = asyncio.Event()
        connected = 0
        reconnects = repeats = 0
        clients = [Client(rotated(i), tok, timeout=120, ca_file=ca) for i, tok in enumerate(tokens)]
        last_revision = [-1] * n  # each agent's, from its last event or bookmark

        async def agent(i: int, c: Client) -> None:
            # as a real agent: a watch that breaks resumes from the last revision seen
            nonlocal connected, reconnects, repeats
            while True:
                try:
                    revision = (await c.list_bindings()).revision
                    break
                except errors.HubUnreachable:  # thousands connecting at once: again
                    reconnects += 1
            connected += 1
            if connected == n:
                ready.set()
            seen: set[str] = set()
            while True:
                try:
                    async for ev in c.watch_bindings(revision=revision):
                        revision = last_revision[i] = ev.revision
                        if ev.type == "ADDED" and ev.object is not None:
                            if ev.object.dataset in seen:
                                repeats += 1
                            seen.add(ev.object.dataset)
                            got.setdefault(ev.object.dataset, []).append(time.monotonic())
                except errors.HubUnreachable:
                    pass
                reconnects += 1

        tasks = [asyncio.create_task(agent(i, c)) for i, c in enumerate(clients)]
        try:
            try:
                await asyncio.wait_for(ready.wait(), DEADLINE_S)
            except TimeoutError:
                failed = {repr(t.exception()) for t in tasks if t.done()}
                raise RuntimeError(
                    f"{connected} of {n} agents listed their bindings within {DEADLINE_S} s; "
                    f"agents failed with {sorted(failed)[:5] or 'nothing'}"
                ) from None
            await asyncio.sleep(0.5)
            # the N agents' clients, connections and tasks stay until the end: out of the
            # collector's way, or a full collection of this process (which timestamps every
            # binding) walks them all, a pause that lands in the latencies of any mode
            gc.freeze()

            def ds(name: str) -> Dataset:
                return Dataset(
                    name=name, mounts=[Mount(uri="s3://bench/data")], placement=Placement()
                )

            async def wait_all(name: str) -> None:
                deadline = time.monotonic() + DEADLINE_S
                while len(got.get(name, [])) < n:
                    if time.monotonic() > deadline:
                        failed = {repr(t.exception()) for t in tasks if t.done()}
                        silent = last_revision.count(-1)
                        raise RuntimeError(
                            f"{name}: {len(got.get(name, []))} of {n} agents got their binding "
                            f"within {DEADLINE_S} s ({reconnects} watches broke and resumed; "
                            f"{silent} agents never got an event or bookmark; agents failed "
                            f"with {sorted(failed)[:5] or 'nothing'}; revisions "
                            f"{sorted(set(last_revision))[:8]})"
                        )
                    await asyncio.sleep(0.002)

            lat: list[float] = []
            sent_lat: list[float] = []  # from the apply's request: its commit included
            profilers = _profile(hub_pids, f"{n}-{label or ('etcd' if store_pids else 'sqlite')}")
            cpu0 = sum(map(cpu_s, hub_pids))
            store_cpu0 = sum(map(cpu_s, store_pids))
            client_cpu0 = time.process_time()
            measured_from = time.monotonic()
            for r in range(rounds):
                sent = time.monotonic()
                await admins[r % len(admins)].apply_dataset(ds(f"lat{r}"))
                acked = time.monotonic()
                await wait_all(f"lat{r}")
                lat += [t - acked for t in got[f"lat{r}"]]
                sent_lat += [t - sent for t in got[f"lat{r}"]]

            t0 = time.monotonic()
            for b in range(burst):
                await admins[b % len(admins)].apply_dataset(ds(f"burst{b}"))
            applied_s = time.monotonic() - t0
            await asyncio.gather(*(wait_all(f"burst{b}") for b in range(burst)))
            delivered_s = time.monotonic() - t0
            hub_cpu = sum(map(cpu_s, hub_pids)) - cpu0
            client_cpu = time.process_time() - client_cpu0
            measured_s = time.monotonic() - measured_from
            _stop_profiling(profilers)
            store_cpu = sum(map(cpu_s, store_pids)) - store_cpu0
            store_rss = sum(map(rss_mib, store_pids))

            hub_rss = [rss_mib(pid) for pid in hub_pids]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()
            gc.unfreeze()  # theirs to collect again, now that they are gone
    finally:
        for a in admins:
            await a.close()
    delivered = (rounds + burst) * n
    store = (
        {"store_cpu_us_per_binding": store_cpu / delivered * 1e6, "store_rss_mib": store_rss}
        if store_pids
        else {}
    )
    return {
        "register_s": register_s,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "max_ms": max(lat) * 1000,
        # the acknowledgement carries every binding of the dataset (N of them): at 10,000
        # it comes after some agents have theirs, so the figures from the request count too
        "sent_p50_ms": pct(sent_lat, 50) * 1000,
        "sent_p99_ms": pct(sent_lat, 99) * 1000,
        "apply_per_s": burst / applied_s,
        "bindings_delivered_per_s": burst * n / delivered_s,
        "hub_rss_mib": max(hub_rss),  # of the largest replica
        **({f"hub{i}_rss_mib": v for i, v in enumerate(hub_rss)} if len(hub_rss) > 1 else {}),
        # of all the replicas together
        "hub_cpu_us_per_binding": hub_cpu / delivered * 1e6,
        # the simulated agents' process (this one): their HTTP parsing, decoding, and
        # TLS decryption when on, on the same two cores as the hub
        "client_cpu_us_per_binding": client_cpu / delivered * 1e6,
        # the share of one core each took over the measured phases: near 1, that side
        # (a single-threaded event loop) was what the latency waited on
        "hub_busy": hub_cpu / measured_s,
        "client_busy": client_cpu / measured_s,
        **store,
        "reconnects": reconnects,  # watches that broke and resumed
        "repeats": repeats,  # events an agent got twice: must stay 0
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _ratios(row: dict[str, float], prefix: str, of: dict[str, float], to: dict[str, float]) -> None:
    """`of` against `to` as ratios: latencies and CPU (lower is better), applies/s."""
    for name, key in (
        ("p50", "p50_ms"),
        ("p99", "p99_ms"),
        ("cpu", "hub_cpu_us_per_binding"),
        ("client_cpu", "client_cpu_us_per_binding"),
    ):
        row[f"{prefix}{name}"] = round(of[key] / max(to[key], 1e-3), 2)
    row[f"{prefix}apply_rate"] = round(of["apply_per_s"] / to["apply_per_s"], 2)


def _etcd_row(
    row: dict[str, float],
    base: dict[str, float],
    sqlite: dict[tuple[str, bool], list[dict[str, float]]],
    runs: dict[str, list[dict[str, float]]],
    failed: dict[str, int],
) -> None:
    """The etcd runs' medians into `row` (`etcd_*`, `against_etcd_*`): against the bare
    baseline, the SQLite hub of the same tree (`etcd_vs_sqlite_*`) and the other tree."""
    for tree, got_runs in runs.items():
        prefix = ("against_" if tree else "") + "etcd_"
        row[f"{prefix}failed_runs"] = failed[tree]
        if not got_runs:
            continue
        got = _medians(got_runs)
        row |= {f"{prefix}{k}": round(v, 2) for k, v in got.items()}
        row[f"{prefix}p99_vs_baseline"] = round(got["p99_ms"] / max(base["p99_ms"], 1e-3), 2)
        row[f"{prefix}cpu_vs_baseline"] = round(
            got["hub_cpu_us_per_binding"] / max(base["cpu_us_per_line"], 1e-3), 2
        )
        if sqlite.get((tree, False)):
            _ratios(row, prefix + "vs_sqlite_", got, _medians(sqlite[(tree, False)]))
        if tree and runs.get(""):
            _ratios(row, prefix + "this_vs_against_", _medians(runs[""]), got)


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--no-tls", action="store_true", help="skip the HTTPS run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode, alternating")
    ap.add_argument(
        "--against",
        metavar="DIR",
        help="also run the hub of another checkout (e.g. main's), alternating with this one",
    )
    ap.add_argument(
        "--etcd",
        action="store_true",
        help="also run 2 hub replicas on a 3-member etcd (plain HTTP), alternating with SQLite",
    )
    ap.add_argument("--etcd-only", action="store_true", help="only the etcd runs (and baseline)")
    ap.add_argument(
        "--native",
        action="store_true",
        help="also run the bare fan-out written in Go (needs go), plain and over TLS",
    )
    ap.add_argument("--out", default="hub_fanout.json", help="file name under bench/results")
    ap.add_argument("--profile", metavar="DIR", help="py-spy each hub over the measured phases")
    args = ap.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile or ""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    # a mode: (hub source tree or "" for this one, TLS or not)
    trees = ["", *([args.against] if args.against else [])]
    modes = [(tree, tls) for tree in trees for tls in ([False] if args.no_tls else [False, True])]
    if args.etcd_only:
        modes = []
    etcd_trees = trees if args.etcd or args.etcd_only else []
    results = []
    # the bare servers' CPU per line is read from /proc in clock ticks (10 ms): 20 fan-outs
    # at least, or a few rounds to 1,000 watchers at ~5 µs a line are a tick or two
    base_rounds = max(args.rounds, 20)
    for n in args.agents:
        runs: dict[tuple[str, bool], list[dict[str, float]]] = {m: [] for m in modes}
        failed = dict.fromkeys(modes, 0)
        etcd_runs: dict[str, list[dict[str, float]]] = {t: [] for t in etcd_trees}
        etcd_failed = dict.fromkeys(etcd_trees, 0)
        base_runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        native_runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for r in range(args.repeat):
            for tls_on in [False] if args.no_tls or args.etcd_only else [False, True]:
                base_runs[tls_on].append(await baseline_run(n, base_rounds, tls_on))
                if args.native:
                    native_runs[tls_on].append(await baseline_run(n, base_rounds, tls_on, True))
            for tree, tls in modes if r % 2 == 0 else modes[::-1]:
                try:
                    one = await hub_run(n, args.rounds, args.burst, tls=tls, tree=tree)
                except RuntimeError as err:  # a lost binding: said, counted, not a median
                    print(f"{n} agents, {tree or 'this tree'}, tls={tls}: {err}", file=sys.stderr)
                    failed[(tree, tls)] += 1
                    continue
                runs[(tree, tls)].append(one)
            for tree in etcd_trees if r % 2 == 0 else etcd_trees[::-1]:
                try:
                    one = await etcd_run(n, args.rounds, args.burst, tree=tree)
                except RuntimeError as err:
                    print(f"{n} agents, {tree or 'this tree'}, etcd: {err}", file=sys.stderr)
                    etcd_failed[tree] += 1
                    continue
                etcd_runs[tree].append(one)
        base = _medians(base_runs[False])
        row: dict[str, float] = {"agents": n}
        row |= {f"baseline_{k}": round(v, 2) for k, v in base.items()}
        row |= _baseline_tls(base_runs[True], base)
        if native_runs[False]:
            native = _medians(native_runs[False])
            row |= {f"baseline_native_{k}": round(v, 2) for k, v in native.items()}
            row |= _baseline_tls(native_runs[True], native, "baseline_native_")
        for tree, tls in modes:
            prefix = ("against_" if tree else "") + ("tls_" if tls else "")
            row[f"{prefix}failed_runs"] = failed[(tree, tls)]
            if not runs[(tree, tls)]:
                continue
            got = _medians(runs[(tree, tls)])
            row |= {f"{prefix}{k}": round(v, 2) for k, v in got.items()}
            row[f"{prefix}p99_vs_baseline"] = round(got["p99_ms"] / max(base["p99_ms"], 1e-3), 2)
            row[f"{prefix}cpu_vs_baseline"] = round(
                got["hub_cpu_us_per_binding"] / max(base["cpu_us_per_line"], 1e-3), 2
            )
            if tls and runs[(tree, False)]:  # the cost of TLS: against plain HTTP, same tree
                plain = _medians(runs[(tree, False)])
                _ratios(row, prefix + "vs_plain_", got, plain)
                row[f"{prefix}extra_us_per_binding"] = round(
                    got["hub_cpu_us_per_binding"] - plain["hub_cpu_us_per_binding"], 2
                )
            if tree and runs[("", tls)]:  # this tree against the other one
                _ratios(row, prefix + "this_vs_against_", _medians(runs[("", tls)]), got)
        _etcd_row(row, base, runs, etcd_runs, etcd_failed)
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    # the simulated agents share this process and the machine with the hub: on uvloop (as
    # the hub) their own TLS costs less of the 2 cores the hub is measured on
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
