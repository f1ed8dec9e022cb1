"""The OTLP receiver: what the data path's exporters send becomes metric points; what is
not the data path's is left out, and a body that is not OTLP is refused."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from agents import otlp


def kv(key: str, value: str | int) -> KeyValue:
    any_value = (
        AnyValue(string_value=value) if isinstance(value, str) else AnyValue(int_value=value)
    )
    return KeyValue(key=key, value=any_value)


def export(resource: list[KeyValue], metrics: list[metrics_pb2.Metric]) -> bytes:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(resource)
    rm.scope_metrics.add().metrics.extend(metrics)
    return bytes(req.SerializeToString())


SIDECAR = [
    kv("fluidfed.dataset", "imagenet"),
    kv("service.name", "fluidfed-sidecar"),
    kv("service.instance.id", "pod-1"),
]


def test_sums_and_gauges_of_the_data_path_become_points() -> None:
    reads = metrics_pb2.Metric(name="fluidfed.read.bytes")
    reads.sum.data_points.add(
        as_int=4096, time_unix_nano=2_500_000_000, attributes=[kv("tier", "MEM"), kv("hit", 1)]
    )
    ratio = metrics_pb2.Metric(name="fluidfed.cache.used_ratio")
    ratio.gauge.data_points.add(as_double=0.25, time_unix_nano=3_000_000_000)
    skipped = metrics_pb2.Metric(name="fluidfed.read.latency")
    skipped.histogram.data_points.add(count=1)
    points = otlp.decode(export(SIDECAR, [reads, ratio, skipped]))
    assert [(p.metric, p.value, p.at, p.attrs) for p in points] == [
        ("fluidfed.read.bytes", 4096.0, 2.5, (("hit", "1"), ("tier", "MEM"))),
        ("fluidfed.cache.used_ratio", 0.25, 3.0, ()),
    ]
    assert {(p.dataset, p.service, p.instance) for p in points} == {
        ("imagenet", "fluidfed-sidecar", "pod-1")
    }


def test_metrics_of_other_services_are_left_out() -> None:
    m = metrics_pb2.Metric(name="http.requests")
    m.sum.data_points.add(as_int=1)
    assert otlp.decode(export([kv("service.name", "something-else")], [m])) == []


def test_a_body_that_is_not_otlp_is_refused() -> None:
    with pytest.raises(otlp.BadExport, match="not an OTLP ExportMetricsServiceRequest"):
        otlp.decode(b"\xff\xff\xff not protobuf")
    assert otlp.response() == b""  # an empty ExportMetricsServiceResponse
