"""The data path's credentials and network policy as Kubernetes objects: the binding's
keys for its cache workers, each access namespace's reader token, the binding's TLS (its
own CA and the workers' serving certificate), and the NetworkPolicy that admits only the
dataset's readers, peers and the agent. Pure."""

from __future__ import annotations

import base64
import datetime as dt
import posixpath
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from agents import objects
from fluidfed import names, pki
from fluidfed.data import credentials
from fluidfed.models import Access, Binding


class DataTLS(msgspec.Struct, frozen=True, kw_only=True):
    """A binding's data-path TLS, as the agent keeps it: a CA of its own, which signs
    nothing but this binding's workers (so trusting it trusts no one else), and the serving
    certificate every cache worker of the binding presents, for the names behind their
    headless Service (`hosts`). PEM text; `not_after` in Unix seconds."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str
    hosts: list[str]
    not_after: float


WORKER_CERT_LIFETIME = dt.timedelta(days=90)
# renewed with a third of its life left: workers load the new one at their next check,
# long before the old one would expire
WORKER_CERT_RENEW = dt.timedelta(days=30)


def worker_hosts(b: Binding) -> list[str]:
    """The names a binding's workers are reached by: `<pod>.<service>` (sidecars, peers,
    the agent) and the Service itself."""
    service = objects.worker_service(b.spec)
    return [f"*.{service}", service]


def data_tls(
    current: DataTLS | None, hosts: list[str], now: float, *, renew: bool = False
) -> DataTLS:
    """The binding's TLS at `now`: `current` as it is, or with a new serving certificate
    when it is due, names other hosts, or `renew` is asked (a rotation); a CA is made
    only when there is none, so the sidecars' trust never has to change."""
    renew_at = current.not_after - WORKER_CERT_RENEW.total_seconds() if current else 0.0
    if current is not None and not renew and current.hosts == hosts and now < renew_at:
        return current
    if current is None:
        # a name of its own: a binding made again (or an agent's state lost) gets a new CA,
        # which sidecars still running add beside the old one
        made = pki.new_ca(f"fluidfed-data-ca-{secrets.token_hex(8)}")
        ca = pki.KeyPair(made.cert_pem, made.key_pem)
    else:
        ca = pki.KeyPair(current.ca_cert.encode(), current.ca_key.encode())
    leaf = pki.issue(
        ca,
        "fluidfed-cache-worker",
        server=True,
        hosts=tuple(hosts),
        lifetime=WORKER_CERT_LIFETIME,
    )
    return DataTLS(
        ca_cert=ca.cert_pem.decode(),
        ca_key=ca.key_pem.decode(),
        cert=leaf.cert_pem.decode(),
        key=leaf.key_pem.decode(),
        hosts=list(hosts),
        not_after=pki.not_after(leaf.cert_pem).timestamp(),
    )


@dataclass(frozen=True, slots=True)
class DataCredentials:
    """A binding's data-path keys (newest first, as the agent keeps them), the index of
    the one that signs tokens (`fluidfed.data.credentials.signing`), and its TLS."""

    keys: Sequence[bytes]
    sign: int = 0
    tls: DataTLS | None = None

    def token(self, claims: credentials.Claims) -> str:
        """`claims` signed by the signing key; "" without keys (nothing will accept it)."""
        if not self.keys:
            return ""
        return credentials.sign(claims, self.keys[min(self.sign, len(self.keys) - 1)])


# where the binding's Secrets appear: the keys in the worker pods, a reader's token in its
# sidecar (one directory per dataset); mode 0600, never in a ConfigMap
WORKER_CREDENTIALS_DIR = "/etc/fluidfed-credentials"

SIDECAR_CREDENTIALS_ROOT = "/etc/fluidfed-credentials"

SECRET_MODE = 0o600


def keys_secret_name(dataset: str) -> str:
    return objects.k8s_name("fluidfed", dataset, "keys")


def reader_secret_name(dataset: str) -> str:
    return objects.k8s_name("fluidfed", dataset, "reader")


def reader_label(dataset: str) -> str:
    """The label the webhook puts on pods that read `dataset`: the workers' NetworkPolicy
    admits them."""
    return names.READER_LABEL_PREFIX + objects.k8s_name("reader", dataset, limit=63)


def sidecar_credentials_file(dataset: str) -> str:
    return posixpath.join(SIDECAR_CREDENTIALS_ROOT, dataset, names.CREDENTIALS_FILE)


def sidecar_ca_file(dataset: str) -> str:
    """The binding's CA in a sidecar: beside its token, from the same Secret."""
    return posixpath.join(SIDECAR_CREDENTIALS_ROOT, dataset, names.CA_FILE)


def worker_file(key: str) -> str:
    """Where a key of the workers' Secret (`names.CREDENTIALS_FILE`, `CA_FILE`,
    `TLS_CERT_FILE`, `TLS_KEY_FILE`) appears in a worker pod."""
    return posixpath.join(WORKER_CREDENTIALS_DIR, key)


def ca_bundle(ctx: objects.ClusterContext, creds: DataCredentials) -> str:
    """What a binding's workers and sidecars trust (PEM): its own CA, for the workers, and
    the agent's, for its API; "" when neither serves TLS."""
    return (creds.tls.ca_cert if creds.tls is not None else "") + ctx.agent_ca


def _secret(
    name: str,
    namespace: str,
    lbls: dict[str, str],
    cred: credentials.CredentialFile,
    files: dict[str, str],
) -> dict[str, Any]:
    data = {names.CREDENTIALS_FILE: credentials.encode_file(cred)}
    data |= {k: v.encode() for k, v in files.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": objects.meta(name, namespace, lbls),
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def keys_secret(b: Binding, ctx: objects.ClusterContext, creds: DataCredentials) -> dict[str, Any]:
    """The binding's keys and its workers' TLS (the serving certificate, its key, and what
    they trust: `ca_bundle`), for its cache workers (home namespace)."""
    cred = credentials.CredentialFile(
        keys=[credentials.encode_key(k) for k in creds.keys], sign=creds.sign
    )
    files = {names.CA_FILE: ca_bundle(ctx, creds)} if ca_bundle(ctx, creds) else {}
    if creds.tls is not None:
        files |= {names.TLS_CERT_FILE: creds.tls.cert, names.TLS_KEY_FILE: creds.tls.key}
    lbls = objects.labels(b, ctx)
    return _secret(keys_secret_name(b.spec.name), b.spec.namespace, lbls, cred, files)


def reader_secret(
    b: Binding, ctx: objects.ClusterContext, creds: DataCredentials, entry: Access
) -> dict[str, Any]:
    """The reader token of an access entry, for the sidecars of its namespace: it reads
    only under the entry's sub-path."""
    claims = credentials.Claims(
        role="reader", dataset=b.spec.name, namespace=entry.namespace, sub_path=entry.sub_path
    )
    cred = credentials.CredentialFile(token=creds.token(claims))
    files = {names.CA_FILE: ca_bundle(ctx, creds)} if ca_bundle(ctx, creds) else {}
    lbls = objects.labels(b, ctx)
    return _secret(reader_secret_name(b.spec.name), entry.namespace, lbls, cred, files)


def network_policy(b: Binding, ctx: objects.ClusterContext) -> dict[str, Any]:
    """Only the dataset's sidecars (pods the webhook labelled, in the access namespaces),
    the other workers and the agent reach the workers' port."""
    ds = b.spec
    readers = sorted({a.namespace for a in ds.access_list()})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": objects.meta(objects.cache_name(ds.name), ds.namespace, objects.labels(b, ctx)),
        "spec": {
            "podSelector": {"matchLabels": objects.worker_selector(b)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [{"port": objects.WORKER_PORT, "protocol": "TCP"}],
                    "from": [
                        {"podSelector": {"matchLabels": objects.worker_selector(b)}},
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {
                                        "key": names.NAMESPACE_NAME_LABEL,
                                        "operator": "In",
                                        "values": readers,
                                    }
                                ]
                            },
                            "podSelector": {"matchLabels": {reader_label(ds.name): "true"}},
                        },
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {names.APP_NAME_LABEL: names.AGENT}},
                        },
                    ],
                }
            ],
        },
    }
