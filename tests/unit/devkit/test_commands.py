"""The demo's command: a SIGTERM or SIGHUP runs its cleanup as Ctrl-C does."""

import asyncio
import os
import signal

import pytest

from devkit import commands


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_cancels_the_demo_its_cleanup_runs_and_the_exit_code_names_it(
    sig: signal.Signals,
) -> None:
    said: list[str] = []
    cleaned: list[str] = []

    async def demo() -> None:
        try:
            os.kill(os.getpid(), sig)
            await asyncio.sleep(30)
        finally:
            os.kill(os.getpid(), sig)  # a second one: the cleanup goes on
            await asyncio.sleep(0.05)
            cleaned.append("done")

    async def run() -> tuple[int, object]:
        code = await commands._until_signalled(demo(), said.append)
        return code, signal.getsignal(sig)  # (the loop still runs: its handlers would show)

    code, handler = asyncio.run(run())
    assert code == 128 + sig.value
    assert cleaned == ["done"]
    assert said == [
        f"{sig.name}: stopping the demo and cleaning up what it started",
        f"{sig.name}: already stopping, cleaning up",
    ]
    # the handlers go with the run: Python's own action is back
    assert handler == signal.SIG_DFL


def test_a_demo_that_finishes_is_0_and_one_that_fails_raises() -> None:
    async def ok() -> None:
        await asyncio.sleep(0)

    async def bad() -> None:
        raise RuntimeError("step failed")

    assert asyncio.run(commands._until_signalled(ok(), print)) == 0
    with pytest.raises(RuntimeError, match="step failed"):
        asyncio.run(commands._until_signalled(bad(), print))


def test_a_signal_during_the_cleanup_does_not_cut_it_short() -> None:
    """The first signal may come once the demo is already cleaning up (its steps done or
    failed): the cleanup still runs to its end, and the exit code names the signal."""
    from devkit import demo

    cleaned: list[str] = []

    async def cleanup() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        cleaned.append("done")

    async def run() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            await demo.to_the_end(cleanup())

    assert asyncio.run(commands._until_signalled(run(), lambda _m: None)) == 128 + signal.SIGTERM
    assert cleaned == ["done"]


def test_a_terminal_gone_with_its_sighup_still_stops_the_demo() -> None:
    """Writing to a terminal that hung up fails (EIO): the demo is cancelled all the same."""

    def say(_message: str) -> None:
        raise OSError(5, "Input/output error")

    async def demo() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(30)

    assert asyncio.run(commands._until_signalled(demo(), say)) == 128 + signal.SIGHUP
