"""fluidfed.aio.run: every process's loop, on uvloop unless told otherwise."""

import asyncio
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

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
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


SETTLE = """
import gc, json, weakref
from fluidfed import aio

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

kept = [Node() for _ in range(1000)]  # start-up's objects, alive for good
dropped = cycle()  # start-up's garbage in a cycle: collected, not frozen
aio.settle_gc()
frozen = gc.get_freeze_count()
later = cycle()  # serving's garbage: the collector still finds it
gc.collect()
print(json.dumps({"frozen": frozen, "threshold": gc.get_threshold(),
                  "dropped": dropped() is None, "later": later() is None}))
"""


def test_settle_gc_freezes_start_up_and_still_collects_what_serving_makes() -> None:
    # in a process of its own: freezing is for the life of the process
    out = subprocess.run(
        [sys.executable, "-c", SETTLE], capture_output=True, text=True, check=True
    ).stdout
    got = json.loads(out)
    assert got["frozen"] >= 1000
    assert got["threshold"][0] == aio.YOUNG_THRESHOLD
    assert got["dropped"], "garbage made before settling must be collected, not frozen"
    assert got["later"], "garbage made after settling must still be collected"


LIMITS = """
import json, resource, sys
from fluidfed import aio
if len(sys.argv) > 1:
    aio.NR_OPEN = sys.argv[1]
before = resource.getrlimit(resource.RLIMIT_NOFILE)
async def main():
    return resource.getrlimit(resource.RLIMIT_NOFILE)
during = aio.run(main())
print(json.dumps({"before": before, "during": during}))
"""


@pytest.mark.parametrize(("soft", "hard"), [(256, 4096), (4096, 4096)])
def test_a_process_started_at_a_low_open_files_limit_runs_at_its_hard_limit(
    soft: int, hard: int
) -> None:
    """As a container runtime may start it (a soft limit of 1,024 under 524,288): `run`
    raises the soft limit to the hard one before the loop starts, and never lowers it."""
    out = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", "--", sys.executable, "-c", LIMITS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    got = json.loads(out)
    assert got["before"] == [soft, hard]
    assert got["during"] == [hard, hard]


def test_a_hard_limit_above_the_kernels_ceiling_is_brought_down_to_it(tmp_path: Path) -> None:
    """nr_open lowered after the process got its hard limit: the kernel refuses any hard
    limit above it, so both limits go to nr_open, not to the hard limit (refused, which
    would leave the soft one where it was)."""
    ceiling = tmp_path / "nr_open"
    ceiling.write_text("2048\n")
    out = subprocess.run(
        ["prlimit", "--nofile=256:4096", "--", sys.executable, "-c", LIMITS, str(ceiling)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["during"] == [2048, 2048]
