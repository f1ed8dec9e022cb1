"""Which blocks the sidecar receives in a thread (`workers._large`): the large ones only."""

from __future__ import annotations

from fluidfed.data import workers
from fluidfed.data.layout import FileRef

MiB = 2**20


def test_blocks_of_large_files_and_large_spans_go_to_a_thread_small_ones_stay_on_the_loop() -> None:
    small = FileRef(mount=0, key="a/small.bin", size=128 * 1024)
    large = FileRef(mount=0, key="a/large.bin", size=64 * MiB)
    assert not workers._large(small, None)  # a small file's one block: aiohttp on the loop
    assert workers._large(large, None)
    assert workers._large(FileRef(mount=0, key="edge", size=workers.THREAD_FROM), None)
    assert not workers._large(large, (5 * MiB, 64 * 1024))  # a random read's small span
    assert workers._large(large, (0, 2 * MiB))
