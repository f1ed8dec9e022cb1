"""Which block buffers `receive.Buffers` uses again: only those nothing else holds; and
a block's answer received over a real loopback TCP connection."""

from __future__ import annotations

import fcntl
import os
import resource
import socket
import threading
import time

import pytest

from devkit import testing
from fluidfed.data import blocks, heap, receive


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


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_as_many_spare_buffers_are_kept_as_were_held_at_once_lately_and_none_when_idle() -> None:
    clock = _Clock()
    bufs = receive.Buffers(spare=2, idle=2.0, clock=clock)
    held = [bufs.take(64) for _ in range(5)]  # five held at once: the peak
    del held
    assert bufs.spares() == 5  # let go since the last take: counted at the next
    taken = bufs.take(64)  # one of them again; the other four make up the peak
    assert bufs.reused == 1 and bufs.spares() == 4
    clock.now += 2.0  # a new window: the last one's peak still counts
    again = bufs.take(64)
    assert bufs.reused == 2 and bufs.spares() == 3
    clock.now += 2.0  # another: five at once is two windows ago, `spare` is what is kept
    third = bufs.take(64)
    assert bufs.reused == 3 and bufs.spares() == 2
    assert not bufs.forget_idle()  # (a take just now)
    clock.now += 2.0
    assert bufs.forget_idle() and bufs.spares() == 0
    del taken, again, third


def test_a_peak_long_ago_counts_no_more() -> None:
    clock = _Clock()
    bufs = receive.Buffers(spare=1, idle=2.0, clock=clock)
    held = [bufs.take(64) for _ in range(6)]
    del held
    clock.now += 40.0  # twenty windows without a take (and nobody asked `forget_idle`)
    taken = bufs.take(64)
    assert bufs.spares() == 1
    del taken


def test_spare_buffers_never_make_more_bytes_than_the_peak_with_those_held() -> None:
    bufs = receive.Buffers(spare=1)
    held = [bufs.take(64) for _ in range(4)]  # the peak: four small buffers' bytes
    del held
    other = bufs.take(128)  # of another size: held with two of the four, not three
    assert bufs.reused == 0 and bufs.spares() == 2
    del other
    small = [bufs.take(64) for _ in range(10)]  # a peak of many small ones ...
    del small
    for n in (2**20, 2**20 + 4096, 2**20 + 8192, 2**20 + 12288):
        bufs.take(n)  # ... then large ones of sizes that vary, each let go at once
    bufs.take(64)  # (counts those let go)
    spare_bytes = sum(len(b) for b in bufs._held) - (64 + heap.PAGE)
    assert spare_bytes <= 10 * (64 + heap.PAGE) + (2**20 + 12288 + heap.PAGE)  # (1 spare)


def test_the_spare_buffers_kept_are_those_taken_last() -> None:
    bufs = receive.Buffers(spare=1)
    old = bufs.take(64)
    new = bufs.take(128)
    new_at = heap.address(new)
    del old, new
    kept = bufs.take(256)  # (a peak of two: room for one spare besides this one)
    assert bufs.spares() == 1
    assert heap.address(bufs.take(128)) == new_at  # the one taken last is the one kept
    assert bufs.reused == 1
    bufs.take(64)  # (the one taken first: dropped, a new one)
    assert bufs.reused == 1
    del kept


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


@pytest.mark.parametrize("sizes", [(4 * 2**20 + 5,), (2 * 2**20, 3 * blocks.CHECK_PIECE)])
def test_a_body_over_plain_tcp_comes_whole_with_its_crc_and_pieces(
    sizes: tuple[int, ...],
) -> None:
    """Over plain TCP a body is received a mark (WAKE_EVERY) at a time into its buffers
    (one per part): every part's bytes and CRC are its own, and so are the pieces' CRCs
    noted for its block file, whatever the sender's pace."""
    bodies = [os.urandom(n) for n in sizes]
    body = b"".join(bodies)
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    peer.settimeout(10)  # (the sender gives up if no request comes: no hang)

    def answer() -> None:
        peer.recv(4096)  # the request
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])
        for at in range(100, len(body), 300_000):  # (unevenly, with pauses)
            time.sleep(0.002)
            peer.sendall(body[at : at + 300_000])

    sender = threading.Thread(target=answer)
    sender.start()
    try:
        got, _ = receive._exchange_on(
            client,
            b"GET / HTTP/1.1\r\n\r\n",
            time.monotonic() + 10,
            True,
            receive.Buffers(),
            sizes if len(sizes) > 1 else (),
        )
    finally:
        sender.join()
        client.close()
        peer.close()
    parts = [(got.body, got.crc), *got.rest]
    assert [bytes(p) for p, _ in parts] == bodies
    for (part, crc), want in zip(parts, bodies, strict=True):
        assert crc == blocks.checksum(want)
        assert blocks.pieces_of(part, crc) == blocks.piece_crcs(want)


def test_an_idle_kept_connection_numbered_past_1023_is_seen_idle_and_then_closed() -> None:
    """A process at a raised open-files limit holds descriptors past select(2)'s reach:
    the check that a kept connection is still idle before it is used again must see one
    there as idle (select raised, and every such connection was dropped as if closed), and
    see it closed once its peer closes it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1100:
        pytest.skip(f"this process may not open descriptors past 1,023 (hard limit {hard})")
    if soft != resource.RLIM_INFINITY and soft <= 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    ours, peer = socket.socketpair()
    try:
        high = fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD_CLOEXEC, 1024)  # (the first free)
        assert high >= 1024
        kept = socket.socket(fileno=high)
        try:
            assert not receive._readable(kept)
            peer.close()
            assert receive._readable(kept)
        finally:
            kept.close()
    finally:
        ours.close()
        peer.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
