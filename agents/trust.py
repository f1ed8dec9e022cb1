"""The data path's credentials and network policy as Kubernetes objects: the binding's
keys for its cache workers, each access namespace's reader token, and the NetworkPolicy
that admits only the dataset's readers, peers and the agent. Pure."""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents import objects
from fluidfed import names
from fluidfed.data import credentials
from fluidfed.models import Access, Binding


@dataclass(frozen=True, slots=True)
class DataCredentials:
    """A binding's data-path keys (newest first, as the agent keeps them) and the index of
    the one that signs tokens (`fluidfed.data.credentials.signing`)."""

    keys: Sequence[bytes]
    sign: int = 0

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


def _secret(
    name: str, namespace: str, lbls: dict[str, str], cred: credentials.CredentialFile
) -> dict[str, Any]:
    data = base64.b64encode(credentials.encode_file(cred)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": objects.meta(name, namespace, lbls),
        "type": "Opaque",
        "data": {names.CREDENTIALS_FILE: data},
    }


def keys_secret(b: Binding, ctx: objects.ClusterContext, creds: DataCredentials) -> dict[str, Any]:
    """The binding's keys, for its cache workers (home namespace)."""
    cred = credentials.CredentialFile(
        keys=[credentials.encode_key(k) for k in creds.keys], sign=creds.sign
    )
    return _secret(keys_secret_name(b.spec.name), b.spec.namespace, objects.labels(b, ctx), cred)


def reader_secret(
    b: Binding, ctx: objects.ClusterContext, creds: DataCredentials, entry: Access
) -> dict[str, Any]:
    """The reader token of an access entry, for the sidecars of its namespace: it reads
    only under the entry's sub-path."""
    claims = credentials.Claims(
        role="reader", dataset=b.spec.name, namespace=entry.namespace, sub_path=entry.sub_path
    )
    cred = credentials.CredentialFile(token=creds.token(claims))
    return _secret(reader_secret_name(b.spec.name), entry.namespace, objects.labels(b, ctx), cred)


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
