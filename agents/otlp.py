"""The agent's OTLP/HTTP metrics receiver: `POST /v1/metrics` with an
ExportMetricsServiceRequest in protobuf, as the OpenTelemetry SDK's exporter sends it.
Cumulative sums and gauges of the data path become `metrics.Point`s."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from agents.metrics import Point
from fluidfed import names
from fluidfed.errors import BadExport as BadExport

CONTENT_TYPE = "application/x-protobuf"


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[Point]:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    try:
        req.ParseFromString(body)
    except DecodeError as err:
        raise BadExport(f"not an OTLP ExportMetricsServiceRequest: {err}") from None
    out: list[Point] = []
    for rm in req.resource_metrics:
        res = _attrs(rm.resource.attributes)
        dataset = str(res.get(names.ATTR_DATASET, ""))
        if not dataset:
            continue  # not the data path's: nothing to scale on
        service = str(res.get("service.name", ""))
        instance = str(res.get("service.instance.id", ""))
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind not in ("sum", "gauge"):
                    continue
                for dp in getattr(m, kind).data_points:
                    value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    attrs = tuple(sorted((k, str(v)) for k, v in _attrs(dp.attributes).items()))
                    out.append(
                        Point(
                            dataset=dataset,
                            service=service,
                            instance=instance,
                            metric=m.name,
                            attrs=attrs,
                            at=dp.time_unix_nano / 1e9,
                            value=float(value),
                        )
                    )
    return out


def response() -> bytes:
    return bytes(metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString())
