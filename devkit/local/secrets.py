"""The data-path credentials the agent keeps in a cluster's Secrets, read back for the local
processes that stand in for its pods (workers and sidecars run as processes here)."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from kubernetes_asyncio import client

from agents import trust
from fluidfed import names
from fluidfed.data import credentials


async def _read(api: Any, namespace: str, name: str) -> credentials.CredentialFile | None:
    try:
        secret = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    raw = base64.b64decode((secret.data or {})[names.CREDENTIALS_FILE])
    return msgspec.json.decode(raw, type=credentials.CredentialFile)


async def worker_credentials(
    api: Any, namespace: str, dataset: str
) -> credentials.CredentialFile | None:
    """The binding's keys, as its worker pods get them (None until the agent made them)."""
    return await _read(api, namespace, trust.keys_secret_name(dataset))


async def keys_anywhere(api: Any, dataset: str) -> tuple[str, credentials.CredentialFile] | None:
    """The binding's keys and their namespace (the dataset's home, found by the Secret's
    name and the agent's labels), None until the agent made them."""
    found = await client.CoreV1Api(api).list_secret_for_all_namespaces(
        field_selector=f"metadata.name={trust.keys_secret_name(dataset)}",
        label_selector=f"{names.OWNED_SELECTOR},{names.DATASET_LABEL}={dataset}",
    )
    for secret in found.items:
        raw = base64.b64decode((secret.data or {})[names.CREDENTIALS_FILE])
        return secret.metadata.namespace, msgspec.json.decode(raw, type=credentials.CredentialFile)
    return None


async def reader_token(api: Any, namespace: str, dataset: str) -> str | None:
    """The reader token of `namespace`'s access entry, as its sidecars get it."""
    got = await _read(api, namespace, trust.reader_secret_name(dataset))
    return got.token if got is not None else None
