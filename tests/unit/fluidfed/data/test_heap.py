from __future__ import annotations

import asyncio
import subprocess
import sys

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


# Arenas are the process's for good: each case runs in a fresh interpreter. Threads allocate
# 4 MiB each at the same time and hold it, which is when glibc would give them arenas.
_THREADS = """
import sys, threading
from fluidfed.data import heap
early = sys.argv[1] == "early"
if early:
    heap.tune()
start, done = threading.Barrier(5), threading.Event()
def hold() -> None:
    start.wait()
    block = bytearray(4 * 2**20)
    done.wait()
threads = [threading.Thread(target=hold) for _ in range(4)]
for t in threads:
    t.start()
start.wait()
if not early:
    heap.tune()
print(heap.arenas())
done.set()
"""


def _arenas_with_threads(when: str) -> tuple[int, str]:
    got = subprocess.run(
        [sys.executable, "-c", _THREADS, when], capture_output=True, text=True, check=True
    )
    return int(got.stdout), got.stderr


def test_threads_started_after_tuning_allocate_from_the_one_heap() -> None:
    arenas, said = _arenas_with_threads("early")
    assert arenas == 1
    assert "arenas exist already" not in said


def test_tuning_after_threads_allocated_is_seen_and_said() -> None:
    arenas, said = _arenas_with_threads("late")
    assert arenas > 1  # they kept their own: what the sidecar did before tuning first
    assert "arenas exist already" in said


def test_a_buffers_address_is_found_read_only_and_sliced_alike() -> None:
    import ctypes

    buf = bytearray(b"x" * 64)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert heap.address(buf) == base
    assert heap.address(memoryview(buf).toreadonly()[5:]) == base + 5  # read-only, sliced
    with pytest.raises(BufferError):
        heap.address(memoryview(buf)[::2])  # not contiguous: no one address


def test_a_page_aligned_view_starts_on_a_page_and_stays_in_its_buffer() -> None:
    for n in (1, 4096, 4 * 2**20 + 7):
        buf = bytearray(n + heap.PAGE)
        view = heap.page_aligned(buf, n)
        assert len(view) == n and heap.address(view) % heap.PAGE == 0
        assert view.obj is buf  # writes land in `buf`
        view[-1:] = b"z"
        assert b"z" in buf
