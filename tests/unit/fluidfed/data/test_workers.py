"""Which blocks the sidecar receives in a thread (`workers._large`): the large ones only; how
a joined answer is cut into blocks (`workers._parts`)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from fluidfed.data import protocol, receive, workers
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


def test_a_joined_answer_is_split_as_its_parts_header_says_or_refused() -> None:
    """How a worker's joined answer is cut into blocks (`workers._parts`): the first block
    is what the parts leave of the body; no header (an older worker) or no parts, the body
    is the one block; parts that leave the first block empty or too long, refused."""
    parts = protocol.parts_header([protocol.Part(4 * MiB, 1, True), protocol.Part(5, 2, False)])
    headers = CIMultiDict({protocol.PARTS: parts})
    assert workers._parts(headers, 8 * MiB + 5) == [4 * MiB, 4 * MiB, 5]
    assert workers._parts(CIMultiDict(), 4 * MiB) == []
    assert workers._parts(CIMultiDict({protocol.PARTS: ""}), 4 * MiB) == []
    for body in (4 * MiB + 5, 4 * MiB, receive.MAX_BODY + 4 * MiB + 6):
        with pytest.raises(ValueError, match=protocol.PARTS):
            workers._parts(headers, body)
