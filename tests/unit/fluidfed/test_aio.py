"""fluidfed.aio.run: every process's loop, on uvloop unless told otherwise."""

import asyncio
import warnings

import pytest
import uvloop

from fluidfed import aio
from fluidfed.errors import FluidfedError


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncio's loop lets OpenDAL's threads abort the process's exit (the module's docstring)
    monkeypatch.delenv("FLUIDFED_EVENT_LOOP", raising=False)
    assert aio.run(_loop_type()) is uvloop.Loop


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUIDFED_EVENT_LOOP", "asyncio")
    loop_type = aio.run(_loop_type())
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert not issubclass(loop_type, uvloop.Loop)


def test_returns_the_result_and_raises_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUIDFED_EVENT_LOOP", raising=False)

    async def fail() -> None:
        raise KeyError("boom")

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert aio.run(answer()) == 42
    with pytest.raises(KeyError, match="boom"):
        aio.run(fail())


def test_a_misspelt_choice_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUIDFED_EVENT_LOOP", "uv-loop")
    coro = _loop_type()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed, not left "never awaited"
        with pytest.raises(FluidfedError, match=r"FLUIDFED_EVENT_LOOP='uv-loop'.*'uvloop'"):
            aio.run(coro)
    assert coro.cr_frame is None  # closed
