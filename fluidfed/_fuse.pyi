"""Types of fluidfed's FUSE session extension (native/fuse/src/lib.rs, on fuser): the
kernel's requests read, and large READ answers written, by threads of its own; the answers
decided in Python (sidecar/fusesession.py)."""

import mmap
from typing import Any

LOOKUP: int
GETATTR: int
READ: int
REREAD: int  # a READ handed back: its answer's block failed a piece's check
SEEN: int  # a READ answered by the session from a block held there (no reply)
BACK: int  # a READ handed back to the session (`Reply.session`) that it could not answer
OPENDIR: int
READDIR: int
STATFS: int
FORGET: int
PLANS_PER_FILE: int  # a file's plans kept at once (`Session.plan`), one per reader of it

# (ino, mode, nlink, size, blocks, mtime_ns, blksize, uid, gid)
Attrs = tuple[int, int, int, int, int, int, int, int, int]

def pieces_hold(
    block: bytes | bytearray | memoryview | mmap.mmap,
    lo: int,
    size: int,
    pieces: bytes,
    piece: int,
    fd: int,
) -> bool: ...  # the replying threads' check of `size` bytes at `lo` (data_checked's)
def cachestat_refused() -> bool: ...  # (then the pieces are faulted in before the check)

class Reply:
    def entry(self, attrs: Attrs, entry_ttl: float, attr_ttl: float) -> None: ...
    def attr(self, attrs: Attrs, attr_ttl: float) -> None: ...
    def open(self, fh: int) -> None: ...  # an OPENDIR's
    def data(self, data: bytes | bytearray | memoryview) -> None: ...
    def data_now(self, data: bytes | bytearray | memoryview) -> None: ...  # in this thread
    def data_checked(
        self,
        block: bytes | bytearray | memoryview,
        lo: int,
        size: int,
        pieces: bytes,
        piece: int,
        ino: int,
        offset: int,
        fd: int,
    ) -> None: ...  # `size` bytes at `lo` of `block`, the pieces they lie in checked first
    def error(self, errno: int) -> None: ...
    # a READ's: answered by the session from its blocks and plans after all, else BACK
    def session(self, ino: int, offset: int, size: int) -> None: ...
    def statfs(
        self,
        blocks: int,
        bfree: int,
        bavail: int,
        files: int,
        ffree: int,
        bsize: int,
        namelen: int,
        frsize: int,
    ) -> None: ...
    def add(self, name: bytes, attrs: Attrs, entry_ttl: float, next: int) -> bool: ...
    def done(self) -> None: ...

class Session:
    def __init__(
        self,
        mountpoint: str,
        options: list[str],
        threads: int = 2,
        repliers: int = 2,
        kernel_opens: bool = True,
        loaders: int = 4,  # threads reading a cold plan's blocks in (`plan`'s `ahead`)
    ) -> None: ...
    def fileno(self) -> int: ...
    def take(self) -> list[tuple[Any, ...]]: ...
    def invalidate_inode(self, ino: int) -> None: ...
    def invalidate_entry(self, parent: int, name: bytes) -> None: ...
    def hold(
        self,
        ino: int,
        start: int,
        block: Any,
        last: bool,
        pieces: bytes | None,
        piece: int,
        fd: int,
        seen: bool,
        memory: bool = False,
    ) -> None: ...
    def plan(
        self,
        ino: int,
        first: int,
        block: int,
        size: int,
        piece: int,
        paths: list[list[str]],
        ahead: int = 0,
        replaces: int | None = None,  # the first block of its reader's plan before
    ) -> None: ...
    def unplan(self, ino: int, index: int | None = None) -> None: ...  # the plan of `index`
    def loaded(self) -> list[tuple[int, int]]: ...  # (ino, block) mapped from plans
    def unhold(self, ino: int | None = None) -> None: ...
    def served(self) -> tuple[int, int]: ...  # (READs, bytes) answered from held blocks
    def requests(self) -> list[tuple[str, int]]: ...
    def close(self) -> None: ...
    def unmount(self) -> None: ...
