"""OpenTelemetry set-up shared by every component: a meter provider with a Prometheus reader.

Components record with OpenTelemetry instruments; `/metrics` serves the same figures in the
Prometheus text format through the SDK's Prometheus reader.
"""

from __future__ import annotations

import prometheus_client
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

_provider: MeterProvider | None = None


def setup(service: str) -> metrics.Meter:
    """Install the process's meter provider once; return a meter for `service`."""
    global _provider
    if _provider is None:
        resource = Resource.create({"service.name": service})
        _provider = MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
        metrics.set_meter_provider(_provider)
    return metrics.get_meter(f"fluidfed.{service}")


def prometheus_text() -> tuple[bytes, str]:
    return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST
