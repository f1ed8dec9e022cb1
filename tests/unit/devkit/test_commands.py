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

    assert asyncio.run(commands._until_signalled(demo(), said.append)) == 128 + sig.value
    assert cleaned == ["done"]
    assert said == [
        f"{sig.name}: stopping the demo and cleaning up what it started",
        f"{sig.name}: already stopping, cleaning up",
    ]
    # the handlers go with the run: Python's own action is back
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)


def test_a_demo_that_finishes_is_0_and_one_that_fails_raises() -> None:
    async def ok() -> None:
        await asyncio.sleep(0)

    async def bad() -> None:
        raise RuntimeError("step failed")

    assert asyncio.run(commands._until_signalled(ok(), print)) == 0
    with pytest.raises(RuntimeError, match="step failed"):
        asyncio.run(commands._until_signalled(bad(), print))
