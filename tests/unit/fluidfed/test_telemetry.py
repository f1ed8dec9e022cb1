"""Where the data path sends its metrics."""

from __future__ import annotations

import pytest


def test_otlp_endpoint_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from fluidfed import telemetry

    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert telemetry.otlp_endpoint() == ""
    assert telemetry.otlp_endpoint("http://agent:8471") == "http://agent:8471/v1/metrics"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert telemetry.otlp_endpoint("http://agent:8471") == "http://collector:4318/v1/metrics"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318/custom")
    assert telemetry.otlp_endpoint("http://agent:8471") == "http://c:4318/custom"


def test_each_export_carries_the_current_token() -> None:
    from fluidfed import telemetry

    tokens = iter(["one", "two"])
    hook = telemetry._Bearer(lambda: next(tokens))

    class Request:
        headers: dict[str, str] = {}

    r = Request()
    r.headers = {}
    assert hook(r).headers == {"Authorization": "Bearer one"}
    assert hook(r).headers == {"Authorization": "Bearer two"}  # a rotated token, next time
