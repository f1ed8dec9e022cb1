"""The OpenAPI 3.1 document of the hub's API, with schemas generated from the models."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from fluidfed.models import (
    Binding,
    BindingStatus,
    Cluster,
    ClusterRecord,
    Dataset,
    DatasetView,
    ErrorBody,
    ListResult,
    Registered,
    WatchEvent,
)
from fluidfed.units import ByteSize, Duration

_REF = "#/components/schemas/{name}"


def _schema_hook(t: type) -> dict[str, Any]:
    if t is ByteSize:
        return {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "examples": ["4GiB", "500Mi"]},
            ],
            "description": "bytes",
        }
    if t is Duration:
        return {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "examples": ["30s", "5m"]},
            ],
            "description": "seconds",
        }
    raise NotImplementedError


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("ErrorBody"), "Invalid input; problems name the field path"),
    "401": _json(_ref("ErrorBody"), "No or unknown token"),
    "403": _json(_ref("ErrorBody"), "The token may not do this"),
    "404": _json(_ref("ErrorBody"), "Not found"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_ERRORS}}
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    return op


_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]


@functools.cache
def document() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            Cluster,
            ClusterRecord,
            Dataset,
            DatasetView,
            Binding,
            BindingStatus,
            ListResult,
            WatchEvent,
            Registered,
            ErrorBody,
        ],
        schema_hook=_schema_hook,
        ref_template=_REF,
    )
    watch_params = [
        {"name": "cluster", "in": "query", "schema": {"type": "string"}},
        {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
        {
            "name": "revision",
            "in": "query",
            "schema": {"type": "integer", "minimum": 0},
            "description": "watch: events after this revision; 410 if compacted (list again)",
        },
    ]
    paths: dict[str, Any] = {
        "/api/v1/clusters": {
            "get": _op(
                "List clusters", {"200": _json({"type": "array", "items": _ref("ClusterRecord")})}
            ),
            "post": _op(
                "Register (or update) a cluster; returns its token when created",
                {"201": _json(_ref("Registered")), "200": _json(_ref("Registered"))},
                body="Cluster",
            ),
        },
        "/api/v1/clusters/{name}": {
            "get": _op("Get a cluster", {"200": _json(_ref("ClusterRecord"))}, params=_NAME),
            "delete": _op(
                "Delete a cluster and its bindings",
                {"204": {"description": "Deleted"}},
                params=_NAME,
            ),
        },
        "/api/v1/clusters/{name}/labels": {
            "patch": _op(
                "Set and remove labels", {"200": _json(_ref("ClusterRecord"))}, params=_NAME
            ),
        },
        "/api/v1/clusters/{name}/heartbeat": {
            "post": _op(
                "Renew the cluster's lease (agent)",
                {"200": _json(_ref("ClusterRecord"))},
                params=_NAME,
            ),
        },
        "/api/v1/datasets": {
            "get": _op(
                "List datasets", {"200": _json({"type": "array", "items": _ref("DatasetView")})}
            ),
            "post": _op(
                "Apply a dataset (create or update)",
                {"201": _json(_ref("DatasetView")), "200": _json(_ref("DatasetView"))},
                body="Dataset",
            ),
        },
        "/api/v1/datasets/{name}": {
            "get": _op("Describe a dataset", {"200": _json(_ref("DatasetView"))}, params=_NAME),
            "put": _op(
                "Apply a dataset", {"200": _json(_ref("DatasetView"))}, body="Dataset", params=_NAME
            ),
            "delete": _op(
                "Delete a dataset and its bindings",
                {"204": {"description": "Deleted"}},
                params=_NAME,
            ),
        },
        "/api/v1/bindings": {
            "get": _op(
                "List bindings, or watch them (newline-delimited WatchEvent)",
                {
                    "200": _json(_ref("ListResult")),
                    "410": _json(_ref("ErrorBody"), "Revision compacted"),
                },
                params=watch_params,
            ),
        },
        "/api/v1/bindings/{name}": {
            "get": _op("Get a binding", {"200": _json(_ref("Binding"))}, params=_NAME),
            "delete": _op(
                "Finalize a retired binding once the agent removed its objects (agent)",
                {
                    "204": {"description": "Forgotten"},
                    "409": _json(_ref("ErrorBody"), "Still wanted"),
                },
                params=_NAME,
            ),
        },
        "/api/v1/bindings/{name}/status": {
            "put": _op(
                "Report a binding's status (agent)",
                {"204": {"description": "Stored"}},
                body="BindingStatus",
                params=_NAME,
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fluidfed hub", "version": "v1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
