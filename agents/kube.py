"""The agent's edge to Kubernetes: server-side apply, get, delete, list and watch of the
objects it owns, through kubernetes-asyncio's dynamic client. Errors become KubeError."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException
from kubernetes_asyncio.dynamic import DynamicClient
from kubernetes_asyncio.dynamic.exceptions import (
    DynamicApiError,
    ResourceNotFoundError,
)

from fluidfed import names
from fluidfed.errors import KubeError
from fluidfed.models import KubeAccess

FIELD_MANAGER = names.AGENT  # server-side apply: the agent owns the fields it sets
REQUEST_TIMEOUT = 30.0  # seconds; a call that does not answer is an error, never a stall
_FOREIGN = (ApiException, DynamicApiError, aiohttp.ClientResponseError, TimeoutError)


def _error(err: Exception, what: str) -> KubeError:
    if isinstance(err, TimeoutError):
        return KubeError(0, f"{what}: no answer within {REQUEST_TIMEOUT:g}s")
    if isinstance(err, ResourceNotFoundError):
        return KubeError(
            404,
            f"{what}: the cluster does not serve this kind ({err}); "
            "is the CRD (for example Fluid's) installed?",
        )
    status = int(getattr(err, "status", 0) or 0)
    body = getattr(err, "body", None) or getattr(err, "summary", lambda: "")()
    message = str(body)
    try:
        import json

        message = json.loads(body).get("message", message)
    except (TypeError, ValueError, AttributeError):
        pass
    return KubeError(status, f"{what}: {status} {message}".strip())


def _checked(got: Any, what: str) -> dict[str, Any]:
    """The dynamic client hands back a failed request's Status instead of raising."""
    data = dict(got.to_dict()) if hasattr(got, "to_dict") else dict(got)
    if data.get("kind") == "Status" and data.get("status") == "Failure":
        code = int(data.get("code") or 0)
        raise KubeError(code, f"{what}: {code} {data.get('reason', '')}: {data.get('message', '')}")
    return data


async def api_client(access: KubeAccess) -> client.ApiClient:
    if access.in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return await config.new_client_from_config(
        config_file=access.kubeconfig, context=access.context or None
    )


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dyn: DynamicClient | None = None
        self.requests = 0
        self.writes = 0
        self._resources: dict[tuple[str, str], Any] = {}
        self._discovery = asyncio.Lock()

    async def open(self) -> Kube:
        # the dynamic client caches discovery in a file named after the server address; a
        # local cluster reuses ports, so each agent process discovers afresh into its own
        self._cache_dir = tempfile.mkdtemp(prefix="fluidfed-discovery-")
        self.dyn = await DynamicClient(
            self.api, cache_file=os.path.join(self._cache_dir, "discovery.json")
        )
        return self

    async def close(self) -> None:
        await self.api.close()
        shutil.rmtree(getattr(self, "_cache_dir", ""), ignore_errors=True)

    async def resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        # discovery is not safe to run concurrently, and a kind also names its subresources
        # (statefulsets/status, .../scale): take the top-level resource only
        async with self._discovery:
            if key not in self._resources:
                assert self.dyn is not None
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT * 2):
                        found = await self.dyn.resources.search(api_version=api_version, kind=kind)
                except Exception as err:
                    raise _error(err, f"{kind}.{api_version}") from err
                top = [r for r in found if "/" not in getattr(r, "name", "/")]
                if not top:
                    raise KubeError(
                        404,
                        f"{kind}.{api_version}: the cluster does not serve this "
                        "kind; is its CRD (for example Fluid's) installed?",
                    )
                self._resources[key] = top[0]
        return self._resources[key]

    async def _call(self, what: str, call: Awaitable[Any]) -> dict[str, Any]:
        """Every request goes through here: a library error or a Status answer becomes a
        KubeError that says what was attempted."""
        self.requests += 1
        try:
            got = await call
        except _FOREIGN as err:
            raise _error(err, what) from err
        return _checked(got, what)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.dyn is not None
        res = await self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        self.writes += 1
        return await self._call(
            f"apply {obj['kind']} {meta.get('namespace', '')}/{meta['name']}",
            self.dyn.server_side_apply(
                res,
                body=obj,
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT,
            ),
        )

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        assert self.dyn is not None
        res = await self.resource(api_version, kind)
        try:
            return await self._call(
                f"get {kind} {namespace}/{name}",
                self.dyn.get(
                    res, name=name, namespace=namespace or None, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        assert self.dyn is not None
        res = await self.resource(api_version, kind)
        self.writes += 1
        try:
            await self._call(
                f"delete {kind} {namespace}/{name}",
                self.dyn.delete(
                    res,
                    name=name,
                    namespace=namespace or None,
                    body={"propagationPolicy": "Background"},
                    _request_timeout=REQUEST_TIMEOUT,
                ),
            )
        except KubeError as err:
            if err.status != 404:
                raise

    async def list(
        self, api_version: str, kind: str, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        assert self.dyn is not None
        res = await self.resource(api_version, kind)
        data = await self._call(
            f"list {kind}",
            self.dyn.get(res, label_selector=selector, _request_timeout=REQUEST_TIMEOUT),
        )
        return list(data.get("items") or []), str(data["metadata"].get("resourceVersion", ""))

    async def watch(
        self, api_version: str, kind: str, selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events after `resource_version`; KubeError(410) when it is too old (relist)."""
        assert self.dyn is not None
        res = await self.resource(api_version, kind)
        self.requests += 1
        try:
            async for ev in self.dyn.watch(
                res,
                label_selector=selector,
                resource_version=resource_version,  # type: ignore[arg-type]
                timeout=300,
            ):
                raw = ev["raw_object"]
                if ev["type"] == "ERROR" or raw.get("kind") == "Status":
                    _checked(raw, f"watch {kind}")
                    return
                yield ev["type"], raw
        except _FOREIGN as err:
            raise _error(err, f"watch {kind}") from err
