"""Logging the daemons share: a warning that may come thousands a second is said once per
interval, with a count; no credential in a server's log."""

from __future__ import annotations

import logging

import pytest

from fluidfed import logs
from fluidfed.logs import Seldom


def test_a_burst_is_said_once_then_once_per_interval_with_how_many_went_unsaid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    seldom = Seldom(logging.getLogger("t.seldom"), 30.0, lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.seldom"):
        said = [seldom.warning("block %s not kept", i) for i in range(1000)]
        now[0] += 29.9
        assert not seldom.warning("block %s not kept", 1000)
        now[0] += 0.1
        assert seldom.warning("block %s not kept", 1001)
        now[0] += 10
        assert not seldom.warning("block %s not kept", 1002)
        now[0] += 7200
        assert seldom.warning("block %s not kept", 1003)
        now[0] += 60
        assert seldom.warning("block %s not kept", 1004)
    assert said == [True] + [False] * 999
    assert [r.getMessage() for r in caplog.records] == [
        "block 0 not kept",
        "block 1001 not kept (and 1000 more like it in the 30 s since the last said)",
        "block 1003 not kept (and 1 more like it in the 7210 s since the last said)",
        "block 1004 not kept",
    ]


def test_credentials_are_hidden_wherever_they_stand() -> None:
    line = (
        "Got more than 8190 bytes when reading: b'Bearer ffc.edge.1afUbHO-x_Y' "
        "then ff1.eyJyb2xl.q-_Z ffa.AbC and authorization: bearer plain-token"
    )
    shown = logs.redact(line)
    for secret in ("ffc.edge.1afUbHO-x_Y", "ff1.eyJyb2xl.q-_Z", "ffa.AbC", "plain-token"):
        assert secret not in shown
    assert shown.startswith("Got more than 8190 bytes when reading: b'Bearer ***'")
    assert logs.redact("no credential here: fluidfed.io/x") == "no credential here: fluidfed.io/x"
    # a quoted header's whitespace as an escape: a token with no fluidfed prefix (an admin
    # token of the operator's own) went through
    assert logs.redact(r"b'Bearer\tmy-admin-secret-0123'") == r"b'Bearer\t***'"


def test_the_servers_log_of_a_request_it_cannot_parse_is_one_line_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp logs a request it could not parse with its traceback and what it read, an
    Authorization header among it (a header past 8190 bytes: the hub logged a cluster's
    token); other errors keep their traceback, their credentials hidden too."""
    from aiohttp.http_exceptions import LineTooLong

    logs.guard_server_logs()
    logs.guard_server_logs()  # (once: a second call adds no second filter)
    server = logging.getLogger("aiohttp.server")
    assert len(server.filters) == 1
    token = "ffc.edge." + "k" * 43
    with caplog.at_level(logging.ERROR, logger="aiohttp.server"):
        try:
            raise LineTooLong(f"b'Bearer {token}{'y' * 100}'", "8190")
        except LineTooLong:
            server.exception("Error handling request from %s", "127.0.0.1")
        try:
            raise RuntimeError(f"while reading Bearer {token}")
        except RuntimeError:
            server.exception("Unhandled exception")
    parsed, other = caplog.records
    assert token not in caplog.text
    assert parsed.exc_info is None and "\n" not in parsed.getMessage()
    assert parsed.getMessage().startswith("Error handling request from 127.0.0.1: LineTooLong")
    assert "Traceback" in other.getMessage() and "Bearer ***" in other.getMessage()
