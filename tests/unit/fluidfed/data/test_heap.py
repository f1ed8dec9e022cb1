from __future__ import annotations

import asyncio

import pytest

from fluidfed.data import heap


def test_blocks_come_from_the_heap_on_glibc() -> None:
    assert heap.tune()  # glibc accepted both settings


async def test_the_heap_is_trimmed_only_after_blocks_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    heap.tune()
    trims: list[int] = []
    moved = [0]
    monkeypatch.setattr(heap, "trim", lambda: trims.append(moved[0]))
    loop = asyncio.create_task(heap.trim_loop(lambda: moved[0], interval=0.02))
    await asyncio.sleep(0.1)
    assert trims == []  # idle: nothing freed, nothing to give back
    moved[0] = 4 * 2**20
    await asyncio.sleep(0.1)
    assert trims == [4 * 2**20]  # once after the move, not again while idle
    loop.cancel()
