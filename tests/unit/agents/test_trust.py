"""The binding's data-path TLS as the agent makes it: a CA of its own, the workers' serving
certificate for their Service's names, renewed as due and never handed to a reader. A real
TLS handshake on memory buffers checks what a sidecar's verification accepts."""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agents import objects, render, trust
from agents.agent import api_serves_tls
from devkit import testing
from fluidfed import names, tls
from fluidfed.models import AgentConfig
from tests.unit.agents.test_render import CREDS, CTX, binding, by_kind

DAY = 86400.0
WORKER = "fluidfed-imagenet-cache-1.fluidfed-imagenet-cache.ml.svc"


def handshake(made: trust.DataTLS, ca_pem: str, host: str) -> None:
    """A worker serving `made` shakes hands with a client trusting `ca_pem` that asks for
    `host` (SSLCertVerificationError if the client refuses)."""
    with tempfile.TemporaryDirectory() as d:
        cert, key = Path(d, "tls.crt"), Path(d, "tls.key")
        cert.write_text(made.cert)
        key.write_text(made.key)
        server = tls.server_context(str(cert), str(key))
    testing.handshake(server, tls.trusting(ca_pem), host)


def test_a_bindings_workers_are_verified_by_its_ca_for_their_service_names_only() -> None:
    b = binding()
    hosts = trust.worker_hosts(b)
    assert hosts == [
        "*.fluidfed-imagenet-cache.ml.svc",
        "fluidfed-imagenet-cache.ml.svc",
    ]
    made = trust.data_tls(None, hosts, 0.0)
    handshake(made, made.ca_cert, WORKER)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(made, made.ca_cert, "fluidfed-other-cache-0.fluidfed-other-cache.ml.svc")
    other = trust.data_tls(None, hosts, 0.0)  # another binding: another CA
    assert other.ca_cert != made.ca_cert
    with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(made, other.ca_cert, WORKER)


def test_the_serving_certificate_is_kept_until_due_and_renewed_under_the_same_ca() -> None:
    hosts = ["*.s.ns.svc", "s.ns.svc"]
    made = trust.data_tls(None, hosts, 0.0)
    now = time.time()
    assert trust.data_tls(made, hosts, now) is made  # not due: unchanged, nothing to apply
    due = made.not_after - trust.WORKER_CERT_RENEW.total_seconds()
    for renewed in (
        trust.data_tls(made, hosts, due + 1),  # due
        trust.data_tls(made, hosts, now, renew=True),  # a rotation
        trust.data_tls(made, ["*.t.ns.svc", "t.ns.svc"], now),  # other names
    ):
        assert renewed.cert != made.cert and renewed.key != made.key
        assert (renewed.ca_cert, renewed.ca_key) == (made.ca_cert, made.ca_key)
        handshake(renewed, made.ca_cert, f"w-0.{renewed.hosts[1]}")  # sidecars keep trusting
    assert made.not_after - now == pytest.approx(
        trust.WORKER_CERT_LIFETIME.total_seconds(), abs=DAY
    )


def _data(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def test_workers_get_the_certificate_and_key_readers_only_the_ca_and_everything_is_https() -> None:
    b = binding()
    made = trust.data_tls(None, trust.worker_hosts(b), 0.0)
    creds = trust.DataCredentials(keys=CREDS.keys, sign=CREDS.sign, tls=made)
    objs = render.desired(b, CTX, creds)
    secrets = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in by_kind(objs)["Secret"]
    }
    keys = _data(secrets[("ml", "fluidfed-imagenet-keys")])
    assert keys[names.CA_FILE] == made.ca_cert.encode()
    assert keys[names.TLS_CERT_FILE] == made.cert.encode()
    assert keys[names.TLS_KEY_FILE] == made.key.encode()
    for ns in ("ml", "research"):
        reader = _data(secrets[(ns, "fluidfed-imagenet-reader")])
        assert set(reader) == {names.CREDENTIALS_FILE, names.CA_FILE}
        assert reader[names.CA_FILE] == made.ca_cert.encode()
    # no key of the binding's TLS leaves the workers' Secret: not in a ConfigMap, not in
    # any reader's Secret (the CA's key never leaves the agent at all)
    for o in objs:
        text = str(o)
        if o["kind"] == "Secret":
            text += "".join(v.decode() for v in _data(o).values())
        assert made.ca_key not in text
        where = (o["metadata"].get("namespace"), o["metadata"]["name"])
        if where != ("ml", "fluidfed-imagenet-keys"):
            assert made.key not in text
    configs = {o["metadata"]["namespace"]: o["data"] for o in by_kind(objs)["ConfigMap"]}
    worker = json.loads(configs["ml"][names.WORKER_CONFIG])
    assert worker["workers"]["scheme"] == "https"
    assert (worker["tls_cert_file"], worker["tls_key_file"], worker["ca_file"]) == (
        "/etc/fluidfed-credentials/tls.crt",
        "/etc/fluidfed-credentials/tls.key",
        "/etc/fluidfed-credentials/ca.crt",
    )
    side = json.loads(configs["research"][names.SIDECAR_CONFIG])
    assert side["workers"]["scheme"] == "https"
    assert side["ca_file"] == "/etc/fluidfed-credentials/imagenet/ca.crt"
    (sts,) = by_kind(objs)["StatefulSet"]
    probe = sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS"
    # without TLS material (the agent always has it for a binding with workers) nothing
    # claims https
    plain = render.desired(b, CTX, CREDS)
    assert "https" not in str([o for o in plain if o["kind"] == "ConfigMap"])


def test_the_agents_api_ca_joins_what_workers_and_sidecars_trust() -> None:
    b = binding()
    made = trust.data_tls(None, trust.worker_hosts(b), 0.0)
    agent_ca = trust.data_tls(None, ["agent"], 0.0).ca_cert  # any other CA's PEM
    ctx = objects.ClusterContext(
        name="edge-1", kind="edge", agent_url="https://agent:8471", agent_ca=agent_ca
    )
    creds = trust.DataCredentials(keys=CREDS.keys, sign=CREDS.sign, tls=made)
    objs = render.desired(b, ctx, creds)
    for s in by_kind(objs)["Secret"]:
        assert _data(s)[names.CA_FILE] == (made.ca_cert + agent_ca).encode()
    # the agent's API over HTTPS but no worker TLS (not what the agent renders; each part
    # stands on its own): the sidecars still get the CA for the API, the workers stay http
    objs = render.desired(b, ctx, CREDS)
    configs = {o["metadata"]["namespace"]: o["data"] for o in by_kind(objs)["ConfigMap"]}
    side = json.loads(configs["research"][names.SIDECAR_CONFIG])
    assert side["ca_file"] == "/etc/fluidfed-credentials/imagenet/ca.crt"
    assert side["workers"]["scheme"] == "http" and side["agent"] == "https://agent:8471"
    worker = json.loads(configs["ml"][names.WORKER_CONFIG])
    assert worker["ca_file"] == "/etc/fluidfed-credentials/ca.crt"
    assert "tls_cert_file" not in worker
    # a worker without TLS serves plain HTTP on its pod's address only where told to (the
    # agent renders it so where its operator turned the data path's TLS off)
    assert worker["plain_http"] is True
    with_tls = by_kind(render.desired(b, ctx, creds))["ConfigMap"]
    assert all("plain_http" not in str(c["data"]) for c in with_tls)


def test_the_agents_api_serves_https_beyond_loopback_or_when_told() -> None:
    def agent(**kw: str) -> AgentConfig:
        return AgentConfig(cluster_file="c.toml", hub="https://hub:8470", **kw)  # type: ignore[arg-type]

    assert not api_serves_tls(agent())  # loopback: nothing crosses a machine
    assert api_serves_tls(agent(api_host="0.0.0.0", api_url="https://a.svc:8471"))
    assert api_serves_tls(agent(api_host="10.0.0.5"))  # a node's address
    assert api_serves_tls(agent(api_url="https://127.0.0.1:8471"))
    assert api_serves_tls(agent(api_tls="on"))
    assert not api_serves_tls(agent(api_host="0.0.0.0", api_tls="off"))


def test_an_operator_may_turn_the_workers_tls_off_where_the_network_encrypts() -> None:
    b = binding()
    made = trust.data_tls(None, trust.worker_hosts(b), 0.0)
    creds = trust.DataCredentials(keys=CREDS.keys, sign=CREDS.sign, tls=made)
    ctx = objects.ClusterContext(name="edge-1", kind="edge", data_tls=False)
    objs = render.desired(b, ctx, creds)
    assert render.desired(b, ctx, CREDS) == objs  # as if there were no TLS material
    text = str(objs)
    assert "https" not in text and "tls.crt" not in text


def test_warm_ups_send_the_agents_token_in_clear_only_to_this_machine() -> None:
    from agents.controllers.warmup import _encrypted_or_local

    assert _encrypted_or_local("https://w-0.fluidfed-d-cache.ns.svc:7070")
    assert _encrypted_or_local("http://127.0.0.1:7070")  # a worker run by hand beside it
    assert _encrypted_or_local("http://[::1]:7070") and _encrypted_or_local("http://localhost:1")
    assert not _encrypted_or_local("http://w-0.fluidfed-d-cache.ns.svc:7070")
    assert not _encrypted_or_local("http://10.0.0.7:7070")
