"""A warning that may come thousands a second is said once per interval, with a count."""

from __future__ import annotations

import logging

import pytest

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
