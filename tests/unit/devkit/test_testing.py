"""The test kit: `eventually` and the model builders."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from devkit import testing
from fluidfed import codec, validation
from fluidfed.models import Binding, CacheSpec, Dataset


async def test_eventually_returns_the_first_truthy_value_of_a_function_or_coroutine() -> None:
    calls = itertools.count()
    assert (
        await testing.eventually(lambda: next(calls) >= 2 and "yes", "two calls", interval=0)
        == "yes"
    )

    async def third() -> int:
        return max(next(calls) - 4, 0)

    assert await testing.eventually(third, "a coroutine", interval=0) == 1


async def test_eventually_retries_errors_and_names_what_it_awaited_and_the_last_error() -> None:
    def broken() -> bool:
        raise ConnectionRefusedError("nobody listens")

    t0 = time.monotonic()
    with pytest.raises(
        AssertionError, match=r"waiting for the hub; last error: ConnectionRefused"
    ) as info:
        await testing.eventually(broken, "the hub", timeout=0.3, interval=0.05)
    assert time.monotonic() - t0 < 2
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_eventually_names_the_last_value_seen() -> None:
    bound: list[str] = []  # the Bound bindings seen: none
    with pytest.raises(
        AssertionError, match=r"after 0.2s \(\d+ tries\) waiting for Bound; last value: \[\]"
    ):
        await testing.eventually(lambda: bound, "Bound", timeout=0.2)


async def test_a_check_that_hangs_is_cut_at_the_deadline() -> None:
    async def hangs() -> bool:
        await asyncio.sleep(600)
        return True

    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="waiting for a hanging check"):
        await testing.eventually(hangs, "a hanging check", timeout=0.3)
    assert time.monotonic() - t0 < 2


async def test_a_timeout_raised_by_the_check_is_only_a_failed_try() -> None:
    tries = itertools.count()

    async def flaky() -> bool:
        if next(tries) < 2:
            raise TimeoutError("read timed out")
        return True

    assert await testing.eventually(flaky, "a flaky server", timeout=10, interval=0) is True


def test_eventually_blocking_follows_the_same_rules() -> None:
    calls = itertools.count()
    assert testing.eventually_blocking(lambda: next(calls) == 3, "three calls", interval=0) is True
    with pytest.raises(AssertionError, match="waiting for nothing; last value: 0"):
        testing.eventually_blocking(lambda: 0, "nothing", timeout=0.1, interval=0.02)


def test_builders_make_valid_models_that_round_trip_and_take_any_field() -> None:
    b = testing.binding(testing.dataset("imagenet", namespace="ml"), "edge", replicas=3)
    assert (b.name, b.dataset, b.cluster, b.mode, b.replicas) == (
        "imagenet.edge",
        "imagenet",
        "edge",
        "sidecar",
        3,
    )
    assert codec.decoder(Binding).decode(codec.encode(b)) == b
    ds = testing.dataset(uri="file:///x", cache=testing.dataset().cache)
    assert codec.convert(codec.to_builtins(ds), Dataset) == ds
    assert ds.mounts[0].uri == "file:///x"
    rec = testing.cluster_record("a", state="Offline", kind="edge", labels={"x": "1"})
    assert rec.spec.kind == "edge" and rec.status.condition is not None
    assert rec.status.condition.type == "Offline"
    assert testing.cluster_record("b", state=None).status.condition is None
    assert testing.cache_tier("SSD", 10, "/ssd").path == "/ssd"
    # what they build by default passes the rules a user's file must pass
    assert validation.check_dataset(testing.dataset()) == []
    assert validation.check_cluster(testing.cluster()) == []
    assert validation.check_cache(CacheSpec(tiers=[testing.cache_tier()]), "c") == []
