"""The hub's etcd store as an operator secures it, on a real etcd: TLS with a client
certificate, and etcd's own users; each misconfiguration is a clear error at start-up that
names the setting to fix, and the password is never printed."""

import asyncio
import os
import secrets
import shutil
import signal
from pathlib import Path

import grpc
import pytest
from aetcd import rpc

from devkit import testing
from devkit.local import etcd
from devkit.testing import HubProcess, run_cli
from fluidfed import Client

pytestmark = pytest.mark.integration


async def _round_trip(hub: HubProcess) -> None:
    async with Client(hub.url, hub.admin_token) as admin:
        await admin.apply_dataset(testing.dataset("d", uri="file:///x"))
        assert [d.spec.name for d in await admin.list_datasets()] == ["d"]


async def test_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    with etcd.EtcdCluster(tmp_path / "etcd", size=1, tls=True) as members:
        assert members.client is not None
        files = members.client
        cfg = tmp_path / "hub.toml"
        cfg.write_text(
            f'[hub]\nstore = "{members.store_url}"\netcd_ca_file = "{files.ca_file}"\n'
            f'etcd_cert_file = "{files.cert_file}"\netcd_key_file = "{files.key_file}"\n'
        )
        with HubProcess(tmp_path / "hub", extra=["--config", str(cfg)]) as hub:
            await _round_trip(hub)
        # without the client certificate etcd asks for: refused, and said so
        cfg.write_text(f'[hub]\nstore = "{members.store_url}"\netcd_ca_file = "{files.ca_file}"\n')
        r = run_cli(
            "hub", "serve", "--port", "0", "--config", str(cfg), "--data-dir", str(tmp_path)
        )
        assert r.returncode == 1
        assert members.store_url in r.stderr and "etcd_cert_file" in r.stderr
        assert "Traceback" not in r.stderr


async def test_etcds_tls_files_renewed_are_used_without_a_restart(tmp_path: Path) -> None:
    """Two replicas on a TLS etcd, each with its Secret volume's files. cert-manager renews
    one's client certificate, etcd untouched: that replica reloads it (SIGHUP: at once;
    else within `TLS_RECHECK`) and still follows what the other writes. Then etcd's CA is
    rotated and its members restart with it: both reach etcd with their new files, no
    restart."""
    with etcd.EtcdCluster(tmp_path / "etcd", size=1, tls=True) as members:
        assert members.client is not None
        secrets_ = {n: tmp_path / f"secret-{n}" for n in ("a", "b")}

        def take(files: etcd.ClientFiles, into: Path) -> None:
            into.mkdir(exist_ok=True)
            for src in (files.ca_file, files.cert_file, files.key_file):
                part = into / f".{src.name}.new"
                shutil.copyfile(src, part)
                os.replace(part, into / src.name)  # (replaced whole, as kubelet does)

        def config(name: str) -> list[str]:
            d = secrets_[name]
            take(members.client, d)  # type: ignore[arg-type]
            cfg = tmp_path / f"hub-{name}.toml"
            cfg.write_text(
                f'[hub]\nstore = "{members.store_url}"\netcd_ca_file = "{d / "ca.crt"}"\n'
                f'etcd_cert_file = "{d / "hub.crt"}"\netcd_key_file = "{d / "hub.key"}"\n'
            )
            return ["--config", str(cfg)]

        with (
            HubProcess(tmp_path / "hub", extra=config("a")) as a,
            HubProcess(tmp_path / "hub", extra=config("b")) as b,
        ):
            assert a.proc is not None and b.proc is not None
            assert a.errors is not None and b.errors is not None
            await _round_trip(a)

            async def reloaded(hub: HubProcess, times: int) -> bool:
                assert hub.errors is not None
                return hub.errors.tail(400).count("etcd's TLS files reloaded") >= times

            async def lists(hub: HubProcess, names: set[str]) -> bool:
                async with Client(hub.url, hub.admin_token) as admin:
                    return {d.spec.name for d in await admin.list_datasets()} == names

            async def through(writer: HubProcess, reader: HubProcess, name: str) -> None:
                async with Client(writer.url, writer.admin_token) as admin:
                    await admin.apply_dataset(testing.dataset(name, uri=f"file:///{name}"))
                want = {"d", "e", "f"} if name == "f" else {"d", "e"}
                await testing.eventually(
                    lambda: lists(reader, want), f"{name} seen by the other replica", timeout=30
                )

            # renewed, etcd untouched: a's watch of etcd goes on (a list waits for it)
            members.renew_client(secrets_["a"])
            a.proc.send_signal(signal.SIGHUP)
            await testing.eventually(lambda: reloaded(a, 1), "a's files reloaded", timeout=30)
            await through(b, a, "e")
            # the CA rotated, the members restarted with it: both on their new files
            members.stop_member("m0")
            rotated = members.rotate_ca()
            take(rotated, secrets_["a"])
            take(rotated, secrets_["b"])
            members.start_member("m0")
            members.wait_healthy(60)
            for hub in (a, b):
                hub.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            await testing.eventually(lambda: reloaded(a, 2), "a's files reloaded", timeout=30)
            await testing.eventually(lambda: reloaded(b, 1), "b's files reloaded", timeout=30)

            async def stored() -> bool:
                async with Client(a.url, a.admin_token) as admin:
                    await admin.apply_dataset(testing.dataset("f", uri="file:///f"))
                return True

            await testing.eventually(stored, "a change stored with the new files", timeout=30)
            await through(a, b, "f")
            assert "Traceback" not in a.errors.tail(400) + b.errors.tail(400)


async def _enable_auth(
    endpoint: str, prefix: bytes, password: str, root_password: str = ""
) -> None:
    """etcd's users, as an operator makes them: root, and `hub` with read and write on the
    catalog's prefix only."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        auth = rpc.AuthStub(channel)
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"))
        root = root_password or secrets.token_hex(8)
        await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=root))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
        await auth.RoleAdd(rpc.AuthRoleAddRequest(name="fluidfed"))
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        perm = rpc.Permission(permType=rpc.Permission.READWRITE, key=prefix, range_end=end)
        await auth.RoleGrantPermission(
            rpc.AuthRoleGrantPermissionRequest(name="fluidfed", perm=perm)
        )
        await auth.UserAdd(rpc.AuthUserAddRequest(name="hub", password=password))
        await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="hub", role="fluidfed"))
        await auth.AuthEnable(rpc.AuthEnableRequest())


async def test_as_an_etcd_user_with_a_password(tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    with etcd.EtcdCluster(tmp_path / "etcd", size=1) as members:
        await _enable_auth(members.endpoints[0], b"/fluidfed/", password)
        cfg = tmp_path / "hub.toml"
        cfg.write_text(f'[hub]\nstore = "{members.store_url}"\netcd_username = "hub"\n')
        env = {"FLUIDFED_ETCD_PASSWORD": password}
        with HubProcess(tmp_path / "hub", extra=["--config", str(cfg)], env=env) as hub:
            await _round_trip(hub)
            assert hub.errors is not None
        assert password not in hub.errors.tail(200)
        # a wrong password: refused at start-up, the setting named, the password not shown
        wrong = secrets.token_hex(12)
        r = run_cli(
            "hub", "serve", "--port", "0", "--config", str(cfg), "--data-dir", str(tmp_path),
            env={**os.environ, "FLUIDFED_ETCD_PASSWORD": wrong},
        )  # fmt: skip
        assert r.returncode == 1
        assert "check etcd_username and its password" in r.stderr
        assert wrong not in r.stderr + r.stdout and "Traceback" not in r.stderr


async def test_a_replica_that_resigns_does_not_campaign_again(tmp_path: Path) -> None:
    """A stopping hub resigns (`_close_watches`) before its background tasks are cancelled;
    in between, its leadership loop must end rather than take the lead back, or the new
    lease would hold the other replicas off for a whole TTL."""
    from hub import leader
    from hub.etcd import EtcdSettings, EtcdStore

    with etcd.EtcdCluster(tmp_path / "etcd", size=1) as members:
        store = EtcdStore(EtcdSettings(endpoints=tuple(members.endpoints), lease_ttl=2))
        lead = leader.Leadership(store, "replica-a")
        stopped = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

        running = asyncio.create_task(lead.run([work]))
        try:
            await lead.leading.wait()
            await lead.resign()
            await running  # it ends: it neither leads nor campaigns any more
            assert stopped.is_set() and not lead.leading.is_set()
            async with grpc.aio.insecure_channel(members.endpoints[0]) as channel:
                held = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=b"/fluidfed/leader"))
            assert not held.kvs  # the lead is free for another replica at once
        finally:
            running.cancel()
            await store.close()


async def test_a_token_etcd_no_longer_takes_is_renewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd drops a user's tokens (its simple tokens when idle for --auth-token-ttl or when
    the password changes; its JWTs on any change of users and roles): the store takes a new
    one from the same member instead of failing the call (with one member: every call)."""
    from hub.etcd import EtcdSettings, EtcdStore

    password, root = secrets.token_hex(12), secrets.token_hex(12)
    monkeypatch.setenv("FLUIDFED_ETCD_PASSWORD", password)
    with etcd.EtcdCluster(tmp_path / "etcd", size=1) as members:
        endpoint = members.endpoints[0]
        await _enable_auth(endpoint, b"/fluidfed/", password, root)
        store = EtcdStore(EtcdSettings(endpoints=(endpoint,), username="hub"))
        try:
            first = await store.current_revision()
            async with grpc.aio.insecure_channel(endpoint) as channel:
                auth = rpc.AuthStub(channel)
                token = (
                    await auth.Authenticate(rpc.AuthenticateRequest(name="root", password=root))
                ).token
                # the same password again: etcd forgets every token it gave `hub`
                await auth.UserChangePassword(
                    rpc.AuthUserChangePasswordRequest(name="hub", password=password),
                    metadata=(("token", token),),
                )
            assert await store.current_revision() >= first
        finally:
            await store.close()


async def test_a_hub_on_a_shared_etcd_can_leave_its_compaction_to_others(tmp_path: Path) -> None:
    """etcd has one history for every key: a hub told not to compact (etcd_compact =
    false) leaves other users' history alone; by default it compacts."""
    from hub.etcd import EtcdSettings, EtcdStore
    from hub.store import Put

    with etcd.EtcdCluster(tmp_path / "etcd", size=1) as members:
        endpoints = tuple(members.endpoints)
        for compact in (False, True):
            prefix = f"/fluidfed-{compact}/".lower()
            store = EtcdStore(EtcdSettings(endpoints=endpoints, prefix=prefix, compact=compact))
            try:
                first = await store.current_revision()
                base = 0  # each store its own prefix: no catalog there yet
                for i in range(5):
                    base = await store.commit(base, [Put("cluster", f"c{i}", b"{}")])
                await store.compact(keep_events=1)
                async with grpc.aio.insecure_channel(endpoints[0]) as channel:
                    old = rpc.RangeRequest(key=b"/other-app/", revision=first)
                    if compact:
                        with pytest.raises(grpc.aio.AioRpcError, match="compacted"):
                            await rpc.KVStub(channel).Range(old)
                    else:
                        await rpc.KVStub(channel).Range(old)  # the history is still there
            finally:
                await store.close()
