import asyncio

from agents.queue import WorkQueue
from fluidfed.backoff import Backoff


def queue(base: float = 0.02) -> WorkQueue:
    return WorkQueue(Backoff(base=base, factor=2.0, cap=1.0))


async def test_a_name_waiting_is_queued_once() -> None:
    q = queue()
    q.add("a")
    q.add("b")
    q.add("a")
    assert await q.get() == "a"
    assert await q.get() == "b"
    assert q.pending() == {"a", "b"}  # both taken, not done
    q.done("a")
    q.done("b")
    assert q.empty()


async def test_a_name_added_while_reconciled_comes_back_once_when_done() -> None:
    q = queue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    q.add("a")
    # not handed to a second worker while the first still holds it
    assert q._ready.empty()
    q.done("a")
    assert await q.get() == "a"
    q.done("a")
    assert q.empty()


async def test_a_temporary_failure_comes_back_after_a_growing_delay() -> None:
    q = queue(base=0.05)
    assert q.retry_later("a") == 0.05
    assert q.failures("a") == 1
    assert q.empty()  # nothing until the delay has passed
    async with asyncio.timeout(1):
        assert await q.get() == "a"
    q.done("a")
    assert q.retry_later("a") == 0.1
    assert q.retry_later("a") == 0.2  # a retry already waits: not scheduled twice
    async with asyncio.timeout(1):
        assert await q.get() == "a"
    q.done("a")
    await asyncio.sleep(0.15)
    assert q.empty()


async def test_success_resets_the_delay() -> None:
    q = queue(base=0.05)
    q.retry_later("a")
    q.retry_later("a")
    q.forget("a")
    assert q.failures("a") == 0
    q.close()
    assert q.retry_later("a") == 0.05
    q.close()


async def test_close_cancels_waiting_retries() -> None:
    q = queue(base=0.01)
    q.retry_later("a")
    q.close()
    await asyncio.sleep(0.05)
    assert q.empty()
