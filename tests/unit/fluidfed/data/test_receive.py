"""Which block buffers `receive.Buffers` uses again: only those nothing else holds."""

from __future__ import annotations

from devkit import testing
from fluidfed.data import heap, receive


def test_a_buffer_still_viewed_is_never_handed_out_again() -> None:
    bufs = receive.Buffers(spare=4)
    first = bufs.take(1024)
    first[:] = b"a" * 1024
    view = memoryview(first).toreadonly()
    part = view[10:20]  # a slice keeps the buffer as the whole view does
    del first, view
    second = bufs.take(1024)
    second[:] = b"b" * 1024
    assert bytes(part) == b"a" * 10 and bufs.reused == 0
    del part
    third = bufs.take(1024)
    assert bufs.reused == 1 and bytes(third) == b"a" * 1024  # the first one, let go
    assert bufs.take(2048) is not third and bufs.reused == 1  # only one of the size asked


def test_at_most_spare_unreferenced_buffers_are_kept_and_none_when_idle() -> None:
    bufs = receive.Buffers(spare=2, idle=0.0)
    for _ in range(5):
        held = [bufs.take(64) for _ in range(5)]
        del held
    assert bufs.spares() == 5  # let go since the last take: counted at the next
    taken = bufs.take(64)  # one of them again; of the other four two stay
    assert bufs.reused >= 1 and bufs.spares() == 2
    assert bufs.forget_idle() and bufs.spares() == 0
    del taken


def test_a_taken_buffer_held_by_its_taker_is_not_spare() -> None:
    bufs = receive.Buffers()
    mine = bufs.take(16)
    assert bufs.spares() == 0
    assert bufs.take(16) is not mine


def test_buffers_start_on_a_page_taken_new_or_again() -> None:
    bufs = receive.Buffers()
    for n in (100, 2**20, 4 * 2**20 + 3):
        first = bufs.take(n)
        assert len(first) == n and heap.address(first) % heap.PAGE == 0
        del first
        again = bufs.take(n)
        assert heap.address(again) % heap.PAGE == 0
    assert bufs.reused == 3


def test_block_buffers_of_a_huge_page_or_more_start_on_one_and_ask_for_huge_pages() -> None:
    # a direct read into 4 KiB pages is split by the disk's segment limit (heap.HUGE)
    bufs = receive.Buffers()
    n = 2 * heap.HUGE + 8192  # a block file read whole: data, trailer, the page after
    first = bufs.take(n)
    at = heap.address(first)
    assert len(first) == n and at % heap.HUGE == 0
    if testing.HAS_THP:
        # its whole huge pages asked for as such, the 8 KiB after them kept to 4 KiB pages
        assert "hg" in testing.vm_flags(at)
        assert "nh" in testing.vm_flags(at + 2 * heap.HUGE)
    first[:] = b"h" * n
    kept = first[5:10]
    del first
    second = bufs.take(n)  # the first is still viewed: a new one
    assert heap.address(second) != at and bytes(kept) == b"hhhhh" and bufs.reused == 0
    second_at = heap.address(second)
    del kept, second
    assert heap.address(bufs.take(n)) in (at, second_at) and bufs.reused == 1
    small = bufs.take(heap.HUGE - 1)  # smaller ones: from the heap, on a page
    assert heap.address(small) % heap.PAGE == 0
    assert "hg" not in testing.vm_flags(heap.address(small))
    received = bufs.take(2 * heap.HUGE)  # a block received: one mapping, all of it asked
    if testing.HAS_THP:
        assert "hg" in testing.vm_flags(heap.address(received) + 2 * heap.HUGE - 1)
