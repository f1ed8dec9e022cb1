"""OpenTelemetry set-up shared by every component: one meter provider per process with a
Prometheus reader (`/metrics`) and, when an OTLP endpoint is known, a periodic OTLP/HTTP
(protobuf) exporter.

The standard variables work: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._METRICS_ENDPOINT`),
`OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), `OTEL_RESOURCE_ATTRIBUTES`, and
`OTEL_SDK_DISABLED=true` turns every instrument into a no-op. So the same components can be
pointed at any collector; by default the data path exports to its cluster's agent.

Instruments of the data path (their names are constants in `fluidfed.names`; attributes
in brackets; the resource carries `service.name`, `service.instance.id`, `fluidfed.dataset`,
`fluidfed.cluster`, `k8s.namespace.name`):

    fluidfed.read.bytes          counter, By     bytes served to readers [fluidfed.source]
    fluidfed.read.operations     counter         reads served [fluidfed.source]
    fluidfed.read.duration       histogram, s    time to serve a read that waited for a
                                                 block (the sidecar's memory hits are not
                                                 timed: they take microseconds)
    fluidfed.cache.hits          counter         blocks found in a tier [fluidfed.tier]
    fluidfed.cache.misses        counter         blocks found in no tier
    fluidfed.cache.evictions     counter         blocks moved down or dropped [fluidfed.tier]
    fluidfed.cache.used          gauge, By       bytes held [fluidfed.tier]
    fluidfed.cache.capacity      gauge, By       quota [fluidfed.tier]
    fluidfed.ufs.read.bytes      counter, By     bytes read from the under storage
    fluidfed.ufs.errors          counter         failed under-storage reads
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import prometheus_client
from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from fluidfed.errors import ConfigError

DEFAULT_EXPORT_INTERVAL_MS = 5000  # the SDK's own default is 60 s: too slow to autoscale on

_provider: MeterProvider | None = None


def otlp_endpoint(default: str = "") -> str:
    """Where metrics go: the standard variables first, then `default` (the agent)."""
    metrics_ep = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "")
    if metrics_ep:
        return metrics_ep
    return _metrics_url(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "") or default)


def _metrics_url(base: str) -> str:
    return f"{base.rstrip('/')}/v1/metrics" if base else ""


def setup(
    service: str,
    *,
    attributes: Mapping[str, str] | None = None,
    otlp_default: str = "",
    token: Callable[[], str] | None = None,
    ca_file: str = "",
) -> metrics.Meter:
    """Install the process's meter provider once; return a meter for `service`. With
    `token`, each export carries `Authorization: Bearer <token()>` (the agent's API takes
    metrics only from its binding's sidecars and workers; a rotated token is picked up at
    the next export); with `ca_file`, an https endpoint is verified against it (the
    binding's Secret holds the agent's CA) instead of the system's roots."""
    global _provider
    if _provider is None:
        resource = Resource.create(
            {
                "service.name": service,  # fluidfed.names' *_SERVICE: the agent matches on it
                "service.instance.id": str(uuid.uuid4()),
                **(attributes or {}),
            }
        )
        readers: list[MetricReader] = [PrometheusMetricReader()]
        endpoint = otlp_endpoint(otlp_default)
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            interval = _export_interval()
            # a collector named by the standard variables is not the agent: it gets neither
            # the agent's CA (the exporter verifies with its own setting on each request, a
            # session's `verify` does not count: None is the standard variable, else the
            # system's) nor the token, which a reader of it could use on the dataset's
            # workers (a peer's may put blocks): it authenticates by OTEL_EXPORTER_OTLP_HEADERS
            elsewhere = endpoint != _metrics_url(otlp_default)
            session = None
            if token is not None and not elsewhere:
                import requests

                session = requests.Session()
                session.auth = _Bearer(token)
            readers.append(
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(
                        endpoint=endpoint,
                        timeout=5,
                        session=session,
                        certificate_file=None if elsewhere else ca_file or None,
                    ),
                    export_interval_millis=interval,
                )
            )
        _provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(_provider)
    return metrics.get_meter(service)


def _export_interval() -> float:
    """OTEL_METRIC_EXPORT_INTERVAL in milliseconds (the standard's unit), or the default;
    ConfigError naming the variable for anything else ("5s" said only "could not convert
    string to float")."""
    text = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "")
    if not text.strip():
        return float(DEFAULT_EXPORT_INTERVAL_MS)
    try:
        ms = float(text)
    except ValueError:
        ms = -1.0
    if not (math.isfinite(ms) and ms > 0):
        raise ConfigError.one(
            f"OTEL_METRIC_EXPORT_INTERVAL={text!r} is not a number of milliseconds above "
            f"zero: write e.g. {DEFAULT_EXPORT_INTERVAL_MS} for 5 seconds",
            path="OTEL_METRIC_EXPORT_INTERVAL",
        )
    return ms


class _Bearer:
    """requests' auth hook: the current token on every export."""

    def __init__(self, token: Callable[[], str]) -> None:
        self.token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


def shutdown() -> None:
    """Export what is left and stop the readers (on a clean exit)."""
    if _provider is not None:
        _provider.shutdown(timeout_millis=3000)


def prometheus_text() -> tuple[bytes, str]:
    return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST


async def metrics_endpoint(request: web.Request) -> web.Response:
    """`GET /metrics` of every component's aiohttp app."""
    body, ctype = prometheus_text()
    return web.Response(body=body, headers={"Content-Type": ctype})
