"""Where the data path sends its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


_EXPORT = """
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = []

class Seen(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Seen)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"
agent = url
if sys.argv[1] == "collector":
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = url
    agent = "http://127.0.0.1:9"  # (never reached: the variable wins)
from fluidfed import telemetry

meter = telemetry.setup("test", otlp_default=agent, token=lambda: "SECRET-TOKEN")
meter.create_counter("fluidfed.test").add(1)
telemetry.shutdown()  # (exports what is left)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("to", ["agent", "collector"])
def test_the_token_goes_to_the_agent_alone_not_to_a_collector_the_variables_name(to: str) -> None:
    """A data-path token lets its holder read (a reader's) or put (a peer's) the dataset's
    blocks: a collector named by OTEL_EXPORTER_OTLP_ENDPOINT (a central one, or one an
    operator injects) must not get it with each export; it authenticates by the standard
    OTEL_EXPORTER_OTLP_HEADERS instead. Real exports, to a real HTTP server on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    got = subprocess.run(
        [sys.executable, "-c", _EXPORT, to],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    seen = json.loads(got.stdout.strip().splitlines()[-1])
    assert seen, got.stderr  # (exported at least once)
    want = "Bearer SECRET-TOKEN" if to == "agent" else None
    assert set(seen) == {want}


def test_a_bad_export_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from fluidfed import telemetry
    from fluidfed.errors import ConfigError

    for bad in ("5s", "nan", "0", "-5", "inf"):
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", bad)
        with pytest.raises(ConfigError, match="not a number of milliseconds") as info:
            telemetry._export_interval()
        assert info.value.problems[0].path == "OTEL_METRIC_EXPORT_INTERVAL"
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "2500")
    assert telemetry._export_interval() == 2500.0
    monkeypatch.delenv("OTEL_METRIC_EXPORT_INTERVAL")
    assert telemetry._export_interval() == telemetry.DEFAULT_EXPORT_INTERVAL_MS
