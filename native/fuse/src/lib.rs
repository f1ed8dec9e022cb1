//! The sidecar's FUSE session (`sidecar/fuse.py`), on fuser: what pyfuse3 does on the
//! event loop's one thread, spread over threads of their own.
//!
//! - Threads of the session read the kernel's requests, each from its own clone of
//!   /dev/fuse, and queue them; an eventfd tells the event loop there are some. Requests
//!   Python has nothing to decide on are answered here: FLUSH (ENOSYS, so the kernel stops
//!   sending it), RELEASEDIR, and every write (EROFS).
//! - Opens take no message (`kernel_opens`): the first OPEN is answered ENOSYS, and from
//!   then on the kernel opens files by itself (no OPEN, no RELEASE; `fc->no_open`),
//!   keeping their pages (FOPEN_KEEP_CACHE, its default then). Else OPEN and RELEASE are
//!   answered here. Either way READs come with handle 0: Python finds the file by inode,
//!   and tells its readers apart by where they read (`DatasetFS.stream`).
//! - The event loop takes the queue (`Session.take`), decides each answer, and gives it to
//!   the request's `Reply`. The answer to a READ (up to 1 MiB that the kernel copies into
//!   the file's page cache) is written to /dev/fuse by the replying threads, without the
//!   GIL: with pyfuse3 that copy held the GIL on the loop's thread, so the loop, and with
//!   it every READ, ran on one core (`README`, "Measured design decisions").
//! - A block that Python answers a READ from, or reads ahead (mapped from a worker's file,
//!   or in the sidecar's memory: at most `HELD_MEMORY` bytes of those), is handed to the
//!   session (`Session.hold`): the READs that lie in it are then answered
//!   by the reading threads themselves (to the replying threads when large), each checked
//!   by its pieces as Python's would be, with no round trip through the event loop; the
//!   first of them per block goes to Python as SEEN (no answer), to read ahead of it.
//! - Where Python hands it a plan (`Session.plan`), the session maps a file's next blocks
//!   from its worker's block files on this node itself: from the page cache as a READ
//!   reaches each (a warm file), or read in from the disk by its loading threads ahead of
//!   the reader (a cold file). A READ of a block being mapped is parked with it, never
//!   waited for on a thread that reads the kernel's requests.
//! - A `Reply` dropped unanswered answers EIO (fuser's own rule): a request is never left
//!   without an answer, so a reader never hangs on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, MountOption, Notifier, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, SessionACL,
};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

// what `Session.take` gives, first in each tuple
const LOOKUP: u8 = 1;
const GETATTR: u8 = 2;
const OPEN: u8 = 3;
const READ: u8 = 4;
const RELEASE: u8 = 5;
const OPENDIR: u8 = 6;
const READDIR: u8 = 7;
const STATFS: u8 = 8;
const FORGET: u8 = 9;
/// A READ handed back by a replying thread: a piece of the block its answer lay in did not
/// match its CRC (`Reply.data_checked`); Python answers it again from elsewhere.
const REREAD: u8 = 10;
/// A READ answered here from a block held (`Session.hold`), the first in that block:
/// (SEEN, None, ino, offset, size), for Python to follow its reader (read ahead of it).
const SEEN: u8 = 11;
/// A READ Python handed back (`Reply.session`) that the session could not answer from its
/// blocks either: (BACK, reply, ino, offset, size), for Python to answer after all.
const BACK: u8 = 12;

/// The requests counted by kind (`Session.requests`; the kinds above, one less, first), for
/// the sidecar's status and tests: OPEN stays at its first one, RELEASE at none.
const COUNTED: [&str; 10] = [
    "lookup", "getattr", "open", "read", "release", "opendir", "readdir", "statfs", "forget",
    "flush",
];
const FLUSH: usize = 9;

/// Answers shorter than this are written on the calling thread (the event loop's): a
/// hand-off to a replying thread costs more than their copy.
const INLINE_REPLY: usize = 64 * 1024;

/// How long `unmount` waits for the session's threads once the mount is detached (they
/// leave when the kernel ends the connection: at once unless a file is still open).
const JOIN_WITHIN: Duration = Duration::from_secs(2);

enum Pending {
    Entry(ReplyEntry),
    Attr(ReplyAttr),
    Open(ReplyOpen),
    Data(ReplyData),
    Statfs(ReplyStatfs),
    DirPlus(ReplyDirectoryPlus),
    Dir(ReplyDirectory),
}

impl Pending {
    fn error(self, err: Errno) {
        match self {
            Pending::Entry(r) => r.error(err),
            Pending::Attr(r) => r.error(err),
            Pending::Open(r) => r.error(err),
            Pending::Data(r) => r.error(err),
            Pending::Statfs(r) => r.error(err),
            Pending::DirPlus(r) => r.error(err),
            Pending::Dir(r) => r.error(err),
        }
    }
}

/// One request for Python: its kind, its answer, and its arguments.
struct Op {
    kind: u8,
    reply: Option<Pending>,
    args: [u64; 3],
    name: Vec<u8>,
    forgets: Vec<(u64, u64)>,
}

impl Op {
    /// Answer a request the closing session will not serve: ENOTCONN, what the caller
    /// sees a moment later anyway, once the mount is gone (not EIO: nothing failed).
    fn refuse(self) {
        if let Some(p) = self.reply {
            p.error(Errno::ENOTCONN);
        }
    }

    fn new(kind: u8, reply: Option<Pending>, args: [u64; 3]) -> Op {
        Op {
            kind,
            reply,
            args,
            name: Vec::new(),
            forgets: Vec::new(),
        }
    }
}

/// A READ's answer for a replying thread: `len` bytes at `lo` of `data`, which stays
/// exported (its memory alive and unmoved) until the thread has written it, then goes back
/// to Python to be let go; with `check`, the pieces they lie in are checked first. `data`
/// is shared: a block held here (`Held`) answers several READs.
struct Job {
    reply: ReplyData,
    data: Arc<Bytes>,
    lo: usize,
    len: usize,
    check: Option<Check>,
    // a READ that runs into the next block (`Shared::answer_held`): that block, the
    // answer's bytes from its start, and their check; the two joined as they are sent
    next: Option<(Arc<Bytes>, usize, Option<Check>)>,
}

/// The blocks a READ's answer was written from, given back (`answer`).
type Answered = (Arc<Bytes>, Option<Arc<Bytes>>);

/// A block's bytes: a buffer of Python's (a mapped block file, or the sidecar's memory;
/// let go of with the GIL held: see `Session.take`), or a worker's block file the session
/// mapped itself (`Session.plan`; let go of anywhere: unmapped, its file closed).
enum Bytes {
    Py(PyBuffer<u8>),
    Map(Mapped),
}

impl Bytes {
    fn bytes(&self) -> &[u8] {
        match self {
            Bytes::Py(b) => view(b),
            Bytes::Map(m) => m.data(),
        }
    }
}

/// Hand `data` to be let go of by the next `take` (the GIL held) if Python's, else let go
/// of it here (the last user of a mapping unmaps it: off the event loop).
fn let_go(shared: &Shared, data: Arc<Bytes>) {
    if matches!(*data, Bytes::Py(_)) {
        lock(&shared.done).push(data);
    }
}

/// `let_go` of the blocks a READ was answered from.
fn let_go_answered(shared: &Shared, (data, next): Answered) {
    let_go(shared, data);
    if let Some(next) = next {
        let_go(shared, next);
    }
}

/// Why a block file was not mapped (`Mapped::open`).
enum Unmapped {
    Cold, // (not whole in the page cache, and not to be read in from the disk there)
    No,   // (not there, or not such a file, or damaged)
}

/// A worker's block file on this node mapped read-only by the session (`Session::load`):
/// `size` bytes of data, then its trailer, the file kept open for `in_page_cache`.
struct Mapped {
    at: *mut libc::c_void,
    len: usize,
    size: usize,
    file: OwnedFd,
}

// SAFETY: a read-only shared mapping, never written through, unmapped once, by Drop
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn data(&self) -> &[u8] {
        // SAFETY: `len` >= `size` bytes mapped at `at`, alive until Drop
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.size) }
    }

    fn all(&self) -> &[u8] {
        // SAFETY: as `data`
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: our mapping, of `len` bytes at `at`, used by no one once dropped
        unsafe { libc::munmap(self.at, self.len) };
    }
}

/// The trailer of a block file with its pieces' CRCs (`blockfile._MAGIC_PIECES`): those
/// CRCs (4 bytes each, big-endian), then this magic and the block's CRC.
const MAGIC_PIECES: &[u8; 4] = b"FFB2";

impl Mapped {
    /// The block file at `path`, if it holds `size` bytes with the CRC of each `piece`
    /// bytes of them (more than one piece) and lies in the page cache whole: mapped as
    /// `blockfile.map_block_file` maps such a file lazily (read-once advice, only its end
    /// faulted in, the pieces' CRCs found to make the block's), with those CRCs. With
    /// `read_in`, a file not whole in the page cache is read into it from the disk here, as
    /// `blockfile.read_cold_block_file` reads one (what of it lies there let go of, the
    /// mapping asking for huge pages, then faulted in whole: folios of a huge page, for the
    /// next reader on this node), which blocks for the disk's read. Else why not (`Unmapped`):
    /// not there, or not such a file (its READs are then Python's, which reads it, or asks
    /// its worker, and says why where it matters); or not in the page cache.
    fn open(
        path: &Path,
        size: usize,
        piece: usize,
        read_in: bool,
    ) -> Result<(Mapped, Pieces), Unmapped> {
        if size <= piece {
            return Err(Unmapped::No); // (a one-piece block is checked whole, by Python)
        }
        let n = size.div_ceil(piece);
        let len = size + 4 * n + 8;
        let file = std::fs::File::open(path).map_err(|_| Unmapped::No)?; // (O_CLOEXEC)
        let fd = file.as_raw_fd();
        if file.metadata().map_err(|_| Unmapped::No)?.len() != len as u64 {
            return Err(Unmapped::No); // (another format, or no block file: Python says which)
        }
        // every page there, unless a loading thread reads it in (else Python reads it from
        // the disk in a thread: a fault on a request thread would stall its READ and those
        // behind it on the disk); and its first and last pages read, not on their way in
        // (cachestat counts a page whose read, another reader's, is under way, and a
        // failed one would be SIGBUS here), as `_probe` asks
        let cached =
            in_page_cache(fd, 0, len) == Some(true) && read_now(fd, 0) && read_now(fd, len - 1);
        if !cached && !read_in {
            return Err(Unmapped::Cold);
        }
        // SAFETY: advice on our open file: read from the disk, what lies in the page cache
        // already (a probe's read-ahead, in small folios) let go of first; else read once,
        // its pages not marked accessed as the mapping goes (see `map_block_file`)
        let advice = if cached {
            libc::POSIX_FADV_NOREUSE
        } else {
            libc::POSIX_FADV_DONTNEED
        };
        unsafe { libc::posix_fadvise(fd, 0, 0, advice) };
        // SAFETY: a new read-only shared mapping of `len` bytes of our file
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(Unmapped::No);
        }
        let m = Mapped {
            at,
            len,
            size,
            file: file.into(),
        };
        if !cached {
            // SAFETY: advice on our mapping (no transparent huge pages: small ones)
            unsafe { libc::madvise(at, len, libc::MADV_HUGEPAGE) };
        }
        // its end faulted in (failing, not signalling, on a page that cannot be read),
        // from the page the data's last piece ends in; all of it, read from the disk
        let from = if cached {
            size / page_size() * page_size()
        } else {
            0
        };
        // SAFETY: within our mapping; the call only faults pages in
        let faulted = unsafe {
            libc::madvise(
                (at as *mut u8).add(from).cast(),
                len - from,
                libc::MADV_POPULATE_READ,
            )
        };
        if faulted != 0 {
            return Err(Unmapped::No);
        }
        let all = m.all();
        let (crcs, tail) = all[size..].split_at(4 * n);
        if &tail[..4] != MAGIC_PIECES {
            return Err(Unmapped::No);
        }
        let want = u32::from_be_bytes([tail[4], tail[5], tail[6], tail[7]]);
        let pieces =
            Pieces::parse(size, crcs, piece, m.file.as_raw_fd()).map_err(|_| Unmapped::No)?;
        if combined(&pieces.crcs, size, piece) != want {
            return Err(Unmapped::No); // (Python finds it damaged, counts it and asks the worker)
        }
        Ok((m, pieces))
    }
}

/// Whether the byte at `at` of file `fd` can be read now, from the page cache, without
/// waiting for a read under way (preadv2 with RWF_NOWAIT).
fn read_now(fd: i32, at: usize) -> bool {
    let mut one = [0u8; 1];
    let iov = libc::iovec {
        iov_base: one.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: one iovec of ours, alive for the call
    unsafe { libc::preadv2(fd, &iov, 1, at as libc::off_t, libc::RWF_NOWAIT) == 1 }
}

/// The kernel's page size (4 KiB, or 16 or 64 KiB).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

/// The CRC-32 of `size` bytes whose pieces of `piece` bytes have the CRCs `crcs`
/// (`blocks.combined`).
fn combined(crcs: &[u32], size: usize, piece: usize) -> u32 {
    let mut all = crc32fast::Hasher::new();
    for (i, &crc) in crcs.iter().enumerate() {
        let n = piece.min(size.saturating_sub(i * piece));
        all.combine(&crc32fast::Hasher::new_with_initial_len(crc, n as u64));
    }
    all.finalize()
}

/// Where the blocks of a file lie in its workers' block files on this node, from block
/// `first` on (`Session.plan`): for each, where its file may lie, and what came of it.
struct Plan {
    id: u64,
    first: u64,
    block: u64,
    size: u64, // the file's
    piece: usize,
    // blocks read in from the disk ahead of the reader by the loading threads (`Load`);
    // 0: a warm file's plan, its blocks mapped from the page cache as READs reach them
    ahead: u64,
    paths: Vec<Entry>,
}

/// A planned block: the paths its file may lie at, not tried yet; being mapped; mapped
/// (from this file: mapped from it again once let go of; `told`: `loaded` said so, its
/// reader having reached it); or not mappable here.
enum Entry {
    Untried(Vec<PathBuf>),
    Loading(u64), // (the load's number: `Shared::loading`)
    Mapped { path: PathBuf, told: bool },
    Failed,
}

impl Plan {
    /// Where block `index` lies in `paths`, if planned.
    fn at(&self, index: u64) -> Option<usize> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        (i < self.paths.len()).then_some(i)
    }

    /// Whether this plan and `other` plan a block in common.
    fn overlaps(&self, other: &Plan) -> bool {
        self.first < other.first + other.paths.len() as u64
            && other.first < self.first + self.paths.len() as u64
    }
}

type Plans = HashMap<u64, Vec<Plan>>;

/// Which of a file's plans `of` plans its block `index`, if one does.
fn planning(of: &[Plan], index: u64) -> Option<usize> {
    of.iter().position(|p| p.at(index).is_some())
}

/// The plan of `ino` that plans its block `index`, if one does.
fn plan_at(plans: &mut Plans, ino: u64, index: u64) -> Option<&mut Plan> {
    let of = plans.get_mut(&ino)?;
    let i = planning(of, index)?;
    Some(&mut of[i])
}

/// The blocks of a planned file `ino` that a READ of `size` bytes at `offset` lies in
/// (one, or two for one that runs into the next block: a kernel read-ahead window need not
/// start where a block does), and the file's block size. None if no plan of the file
/// stands, or the READ runs past the next block too.
fn read_blocks(plans: &Plans, ino: u64, offset: u64, size: u64) -> Option<(Range<u64>, u64)> {
    let p = plans.get(&ino)?.first()?; // (one block size for all of a file's plans)
    let index = offset / p.block;
    let end = offset.saturating_add(size).min(p.size).max(offset + 1);
    let last = (end - 1) / p.block;
    (last <= index + 1).then_some((index..last + 1, p.block))
}

/// Where a block that a READ lies in stands for it (`Shared::ready`).
enum Ready {
    Held,
    Loading(u64), // (the load's number: the READ is parked for it)
    No,           // (not planned, past the file, or not mappable here)
}

/// Plan `id` of `ino`, if it stands.
fn plan_of(plans: &mut Plans, ino: u64, id: u64) -> Option<&mut Plan> {
    plans.get_mut(&ino)?.iter_mut().find(|p| p.id == id)
}

impl Entry {
    /// Take a block untried, or mapped before, for load `seq`: (the paths to try, whether
    /// `loaded` told it already); None (left as it is) for any other.
    fn claim(&mut self, seq: u64) -> Option<(Vec<PathBuf>, bool)> {
        match std::mem::replace(self, Entry::Loading(seq)) {
            Entry::Untried(paths) => Some((paths, false)),
            Entry::Mapped { path, told } => Some((vec![path], told)),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// Whether `held` holds the block at `start` of `ino`.
fn holds(held: &[Held], ino: u64, start: u64) -> bool {
    held.iter().any(|h| h.ino == ino && h.start == start)
}

/// A block of a cold plan for a loading thread to read in ahead of its reader
/// (`Shared::queue_ahead`).
struct Load {
    ino: u64,
    id: u64, // its plan's
    index: u64,
    start: u64,
    len: usize,
    last: bool,
    piece: usize,
    paths: Vec<PathBuf>,
    told: bool, // (`Entry::Mapped`)
    seq: u64,   // the load's number (`Shared::loading`)
}

/// A planned block (`finish`): (ino, the plan's id, the block's index).
type LoadKey = (u64, u64, u64);

/// A READ that came for a block being mapped (`Shared::load`): answered once that is held,
/// else passed on to Python (`Loading`), never waited for on the thread that read it.
struct Parked {
    reply: ReplyData,
    offset: u64,
    size: usize,
}

/// What the answers from a block not checked whole are checked against: the CRC-32 of
/// each `piece` bytes of the block, and the mapped file, open (for `in_page_cache`).
struct Pieces {
    crcs: Vec<u32>,
    piece: usize,
    fd: i32,
}

/// A READ's check: its block's `Pieces`, and the READ (to hand it back if one does not
/// match).
struct Check {
    pieces: Arc<Pieces>,
    ino: u64,
    offset: u64,
}

/// cachestat(2)'s number where most architectures share a table (Linux 6.5); elsewhere
/// the pages are faulted in instead.
const SYS_CACHESTAT: Option<libc::c_long> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)) {
    Some(451)
} else {
    None
};

/// Whether bytes `start..end` of the open file `fd` all lie in the page cache (so reading
/// them through a mapping faults no disk read: a page whose own read is under way or
/// failed aside, or one evicted meanwhile, the window the check leaves), asked with
/// cachestat, which takes no lock of this process's (faulting pages in takes the mmap
/// lock the event loop's mappings take too: 0.05 CPU-s/GiB more). None where the kernel
/// cannot say: no cachestat (ENOSYS: an older kernel, or a seccomp profile), or refused
/// (EPERM: Linux 6.14 and later, for a file the caller may neither write nor own); either
/// is remembered and not asked again, since a sidecar's mapped files all come from one
/// worker's tier, with one owner and mode.
fn in_page_cache(fd: i32, start: usize, end: usize) -> Option<bool> {
    if CACHESTAT_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let number = SYS_CACHESTAT?;
    let range = Range {
        off: start as u64,
        len: (end - start) as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both ours and alive for the call
    let r = unsafe {
        libc::syscall(
            number,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    if r != 0 {
        let refused = io::Error::last_os_error().raw_os_error();
        if matches!(refused, Some(libc::ENOSYS | libc::EPERM)) {
            CACHESTAT_REFUSED.store(true, Ordering::Relaxed);
        }
        return None;
    }
    let page = page_size();
    let pages = ((end - 1) / page - start / page + 1) as u64;
    Some(stat.cache >= pages)
}

/// Set once cachestat was refused (`in_page_cache`): the pages are faulted in instead.
static CACHESTAT_REFUSED: AtomicBool = AtomicBool::new(false);

impl Pieces {
    /// The CRCs of a mapped block of `n` bytes in pieces of `piece` bytes, as its trailer
    /// has them (`pieces`: 4 bytes each, big-endian), the file open as `fd`.
    fn parse(n: usize, pieces: &[u8], piece: usize, fd: i32) -> PyResult<Self> {
        let page = 4096; // (the smallest page: a piece starts on a page of the mapping)
        if piece == 0 || !piece.is_multiple_of(page) {
            return Err(PyValueError::new_err(format!(
                "pieces of {piece} bytes: expected a multiple of {page}"
            )));
        }
        if !pieces.len().is_multiple_of(4) || pieces.len() / 4 < n.div_ceil(piece) {
            return Err(PyValueError::new_err(format!(
                "{} bytes of CRCs for {n} bytes in pieces of {piece}",
                pieces.len()
            )));
        }
        let crcs = pieces
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Pieces { crcs, piece, fd })
    }
}

impl Check {
    /// The check of `size` bytes at `lo` of a mapped block of `n` bytes, whose pieces of
    /// `piece` bytes have the CRCs `pieces` (4 bytes each, big-endian, as its trailer has
    /// them), the file open as `fd`, for the READ at (ino, offset).
    fn new(
        n: usize,
        lo: usize,
        size: usize,
        pieces: &[u8],
        piece: usize,
        fd: i32,
        (ino, offset): (u64, u64),
    ) -> PyResult<Self> {
        if lo.checked_add(size).is_none_or(|end| end > n) {
            return Err(PyValueError::new_err(format!(
                "{size} bytes at {lo} of a block of {n}"
            )));
        }
        Ok(Check {
            pieces: Arc::new(Pieces::parse(n, pieces, piece, fd)?),
            ino,
            offset,
        })
    }

    /// Whether every piece of `block` that bytes `lo..lo + len` lie in matches its CRC,
    /// each taken just before the copy reads the same bytes (from this core's caches).
    /// The block is a mapped file: its pages must all lie in the page cache first (else
    /// faulted in, MADV_POPULATE_READ, where the kernel cannot say), so a page the kernel
    /// let go of fails the check (the READ is answered from elsewhere) rather than being
    /// read from the disk here, where a failed read would raise SIGBUS in this thread.
    fn holds(&self, block: &[u8], lo: usize, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        let p = &*self.pieces;
        let first = lo / p.piece;
        let last = (lo + len - 1) / p.piece;
        let start = first * p.piece;
        let end = ((last + 1) * p.piece).min(block.len());
        let readable = in_page_cache(p.fd, start, end).unwrap_or_else(|| {
            // SAFETY: a range of the caller's mapping (`start` is a multiple of the piece,
            // which the caller makes a multiple of the page, from the mapping's first
            // byte); the call only faults pages in, and fails rather than signals
            let faulted = unsafe {
                libc::madvise(
                    block[start..end].as_ptr() as *mut libc::c_void,
                    end - start,
                    libc::MADV_POPULATE_READ,
                )
            };
            faulted == 0
        });
        readable
            && (first..=last).all(|i| {
                let start = i * p.piece;
                let end = (start + p.piece).min(block.len());
                p.crcs
                    .get(i)
                    .is_some_and(|&want| crc32fast::hash(&block[start..end]) == want)
            })
    }
}

thread_local! {
    // the buffer a thread joins the answers of READs across two blocks in (`answer`), kept:
    // a new one for each faulted its pages in anew (a READ's size at most, 1 MiB)
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Write a READ's answer (its pieces checked first, if it says so; a READ whose piece does
/// not match goes back to Python as REREAD instead, and its file's blocks held here are
/// let go of); one that runs into the next block is written from the two joined. Gives
/// the buffers back to be let go with the GIL held.
fn answer(job: Job, shared: &Shared) -> Answered {
    let Job {
        reply,
        data,
        lo,
        len,
        check,
        next,
    } = job;
    let bytes = data.bytes();
    let holds = |c: &Option<Check>, block: &[u8], lo: usize, len: usize| {
        c.as_ref().is_none_or(|c| c.holds(block, lo, len))
    };
    let sound = holds(&check, bytes, lo, len)
        && next
            .as_ref()
            .is_none_or(|(block, n, c)| holds(c, block.bytes(), 0, *n));
    // (the READ's file and offset: either check has them)
    let read = check
        .as_ref()
        .or(next.as_ref().and_then(|(.., c)| c.as_ref()));
    let total = len + next.as_ref().map_or(0, |&(_, n, _)| n);
    match (sound, read, &next) {
        (false, Some(c), _) => {
            shared.unhold(Some(c.ino));
            let args = [c.ino, c.offset, total as u64];
            shared.push(Op::new(REREAD, Some(Pending::Data(reply)), args));
        }
        (_, _, None) => reply.data(&bytes[lo..lo + len]),
        (_, _, Some((block, n, _))) => JOINED.with_borrow_mut(|joined| {
            // (one copy more than a READ within one block: fuser sends one slice)
            joined.clear();
            joined.extend_from_slice(&bytes[lo..lo + len]);
            joined.extend_from_slice(&block.bytes()[..*n]);
            reply.data(joined);
        }),
    }
    (data, next.map(|(block, ..)| block))
}

/// A block that Python answered a READ from (or will), held so that the READs after it
/// that lie in it are answered here, without a round trip through the event loop
/// (`Session.hold`), or one the session mapped or read in itself from a plan
/// (`Session.plan`): `start` is its first byte in file `ino`.
struct Held {
    ino: u64,
    start: u64,
    last: bool,   // the file's last block: a READ past its end gets the bytes there are
    memory: bool, // in the sidecar's memory, not mapped from a file (`HELD_MEMORY`)
    data: Arc<Bytes>,
    pieces: Option<Arc<Pieces>>, // (None: checked whole)
    seen: bool,                  // Python heard of a READ in it (a SEEN, or one it answered)
    ahead: bool,                 // read in ahead of its reader, no READ in it yet (`Load`)
    tell: bool,                  // and `loaded` is to tell its first READ (not told before)
    index: u64,                  // (a planned block's)
    used: Instant,
}

/// How many blocks are held at most (the least lately used let go of first), how many
/// bytes of them in the sidecar's memory (which its memory tier may have let go of
/// meanwhile), and how long one unused is held (an evicted block file keeps its disk
/// space while mapped).
const HELD_MAX: usize = 16;
const HELD_MEMORY: usize = 8 << 20;
const HELD_IDLE: Duration = Duration::from_secs(1);
// (a block read in ahead of a slow reader: kept for it longer, as the sidecar's read-ahead
// kept its blocks in its memory tier until used or evicted)
const HELD_AHEAD_IDLE: Duration = Duration::from_secs(30);
// plans kept of one file (`Session.plan`): one per reader of it at another place (each one
// hands its own over), the one made first let go of past these
const PLANS_PER_FILE: usize = 4;

struct Shared {
    queue: Mutex<Vec<Op>>,
    counts: [AtomicU64; COUNTED.len()], // requests by kind (COUNTED)
    kernel_opens: bool,                 // OPEN answered ENOSYS: the kernel opens files itself
    wake: OwnedFd,                      // eventfd: the queue went from empty to not
    closed: AtomicBool,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    done: Mutex<Vec<Arc<Bytes>>>, // written: let go of by the next `take` (the GIL)
    held: Mutex<Vec<Held>>,
    // where the blocks of a file lie in its workers' files here (`Session.plan`), by inode,
    // up to PLANS_PER_FILE of a file, none two of which plan one block, the one made first
    // first (locked before `held` where both are)
    plans: Mutex<HashMap<u64, Vec<Plan>>>,
    planned: AtomicU64,             // the plans made so far (each plan's `id`)
    loaded: Mutex<Vec<(u64, u64)>>, // (ino, block) mapped here from a plan, since `loaded`
    // the blocks being mapped, by the load's number (each load its own: a block let go of
    // and mapped again is another load), with the READs parked for them
    loading: Mutex<HashMap<u64, Vec<Parked>>>,
    loads_made: AtomicU64,
    loads: Mutex<Option<mpsc::Sender<Load>>>, // to the loading threads (`queue_ahead`)
    served: [AtomicU64; 2], // READs answered from `held`, and their bytes, since `served`
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Count one request of `kind` (an index into COUNTED).
    fn count(&self, kind: usize) {
        self.counts[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// Queue `op` for Python; once the session is closed, `op` is answered ENOTCONN.
    fn push(&self, op: Op) {
        let was_empty = {
            let mut q = lock(&self.queue);
            // (under the queue's lock: `close` empties it under the same lock, so nothing
            // is queued after it and left unanswered)
            if self.closed.load(Ordering::Acquire) {
                drop(q);
                op.refuse();
                return;
            }
            let e = q.is_empty();
            q.push(op);
            e
        };
        if was_empty {
            self.wake();
        }
    }

    /// Make the eventfd readable: the loop calls `take`.
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an eventfd we own, 8 bytes from a u64 that outlives the call
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Take no more requests; those queued, and the READs parked for blocks being mapped,
    /// are answered ENOTCONN. The loading threads end.
    fn close(&self) {
        drop(lock(&self.loads).take());
        let queued = {
            let mut q = lock(&self.queue);
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *q)
        };
        for op in queued {
            op.refuse();
        }
        let parked: Vec<Parked> = lock(&self.loading)
            .values_mut()
            .flat_map(std::mem::take)
            .collect();
        for p in parked {
            p.reply.error(Errno::ENOTCONN);
        }
    }

    /// A READ's answer from a block held here, if one holds all of it (or all there is of
    /// it, in the file's last block), or from the two held blocks a READ runs across (a
    /// kernel read-ahead window starts where its reader started, not where a block does: a
    /// reader that starts mid-block sends such READs throughout): its parts.
    fn answer_held(&self, ino: u64, offset: u64, size: usize) -> Option<(Part, Option<Part>)> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut held = lock(&self.held);
        let at = |held: &[Held], offset: u64| {
            held.iter().position(|h| {
                h.ino == ino && offset >= h.start && offset - h.start < h.data.bytes().len() as u64
            })
        };
        let i = at(&held, offset)?;
        let lo = (offset - held[i].start) as usize;
        let room = held[i].data.bytes().len() - lo;
        let next = if size > room && !held[i].last {
            // (none if the next block is not held, or the READ runs past it too: Python
            // joins them)
            let j = at(&held, offset + room as u64)?;
            if size - room > held[j].data.bytes().len() && !held[j].last {
                return None;
            }
            Some(j)
        } else {
            None
        };
        if size < INLINE_REPLY
            && next
                .into_iter()
                .chain([i])
                .any(|i| held[i].pieces.is_some())
        {
            // (a small READ of a block not checked whole: Python checks the block whole,
            // once, where each such READ would check a whole piece here)
            return None;
        }
        let first = held[i].part(lo, size.min(room));
        let second = next.map(|j| {
            let n = (size - room).min(held[j].data.bytes().len());
            held[j].part(0, n)
        });
        let len = first.len + second.as_ref().map_or(0, |p| p.len);
        self.served[0].fetch_add(1, Ordering::Relaxed);
        self.served[1].fetch_add(len as u64, Ordering::Relaxed);
        Some((first, second))
    }

    /// Let go of the blocks held for `ino` (all, for None): its buffers go with the next
    /// `take` (under the GIL).
    fn unhold(&self, ino: Option<u64>) {
        let gone: Vec<Held> = {
            let mut plans = lock(&self.plans);
            match ino {
                Some(i) => drop(plans.remove(&i)),
                None => plans.clear(),
            }
            let mut held = lock(&self.held);
            let (gone, kept) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|h| ino.is_none_or(|i| h.ino == i));
            *held = kept;
            gone
        };
        if !gone.is_empty() {
            lock(&self.done).extend(gone.into_iter().map(|h| h.data));
        }
    }

    /// Answer a READ from a block held here, if one holds it (`answer_held`): its reply
    /// back if not.
    fn serve(&self, ino: u64, offset: u64, size: usize, reply: ReplyData) -> Option<ReplyData> {
        let Some((first, second)) = self.answer_held(ino, offset, size) else {
            return Some(reply);
        };
        let parts = || std::iter::once(&first).chain(second.as_ref());
        for (index, tell) in parts().filter_map(|p| p.reached) {
            self.reached(ino, index, tell);
        }
        self.count(READ as usize - 1);
        for p in parts().filter(|p| p.first) {
            self.push(Op::new(SEEN, None, [ino, p.at, p.len as u64]));
        }
        let check = |p: &Part| {
            p.pieces.clone().map(|pieces| Check {
                pieces,
                ino,
                offset,
            })
        };
        let job = Job {
            reply,
            check: check(&first),
            next: second.map(|p| {
                let c = check(&p);
                (p.data, p.len, c)
            }),
            data: first.data,
            lo: first.lo,
            len: first.len,
        };
        if let Some(answered) = self.dispatch(job) {
            let_go_answered(self, answered); // (Python's with the GIL: see `take`)
        }
        None
    }

    /// Hand a request to Python, counted.
    fn ask(&self, kind: u8, reply: Pending, args: [u64; 3]) {
        self.count(kind as usize - 1);
        self.push(Op::new(kind, Some(reply), args));
    }

    /// `serve`, else `load`, else pass the READ on to Python.
    fn answer_or_ask(&self, ino: u64, offset: u64, size: usize, reply: ReplyData) {
        let Some(reply) = self.serve(ino, offset, size, reply) else {
            return;
        };
        let Some(reply) = self.load(ino, offset, size, reply) else {
            return; // (answered, or parked for its block: `Loading`)
        };
        self.ask(READ, Pending::Data(reply), [ino, offset, size as u64]);
    }

    /// Map the blocks of file `ino` that a READ of `size` bytes at `offset` lies in (one,
    /// or two for a READ that runs into the next block: answered from the two, joined,
    /// `answer_held`) and that are not held here, from their worker's files here, where the
    /// file's plans say (`Session.plan`); hold each as `Session.hold` would (checked by its
    /// pieces; no SEEN: Python reads nothing ahead of what is planned) and answer the READ
    /// from them; its reply back (for Python) if not. Only for a READ of INLINE_REPLY or
    /// more. A warm plan's block is mapped here, from the page cache; a cold plan's is read
    /// in by a loading thread (`queue_ahead`), and the READ parked meanwhile, as is one for
    /// a block another thread is mapping (`Loading`): the threads that read the kernel's
    /// requests never wait for the disk. A block mapped once and let go of since is mapped
    /// again from the same file, told once; one that failed is not tried again (its READs
    /// are Python's, which lets the plan go).
    fn load(&self, ino: u64, offset: u64, size: usize, reply: ReplyData) -> Option<ReplyData> {
        if self.closed.load(Ordering::Acquire) || size < INLINE_REPLY {
            return Some(reply);
        }
        let Some((blocks, block)) = read_blocks(&lock(&self.plans), ino, offset, size as u64)
        else {
            return Some(reply);
        };
        let mut wait = None;
        for index in blocks {
            match self.ready(ino, index, block) {
                Ready::Held => {}
                Ready::Loading(seq) => wait = Some(seq), // (the last: both loads under way)
                Ready::No => return Some(reply),
            }
        }
        match wait {
            Some(seq) => self.park(ino, seq, offset, size, reply),
            None => self.serve(ino, offset, size, reply),
        }
    }

    /// Whether block `index` (of `block` bytes) of file `ino` is held here for a READ of
    /// it: held already; mapped now (a warm plan's, from the page cache); being read in by
    /// a loading thread (a cold plan's, queued with the blocks after it; or a warm plan's
    /// whose file the page cache let go of since, alone); or none of those.
    fn ready(&self, ino: u64, index: u64, block: u64) -> Ready {
        let start = index * block;
        let (key, len, last, piece, paths, told, seq) = {
            let mut plans = lock(&self.plans);
            if holds(&lock(&self.held), ino, start) {
                return Ready::Held;
            }
            let Some(p) = plan_at(&mut plans, ino, index) else {
                return Ready::No;
            };
            if start >= p.size {
                return Ready::No;
            }
            let i = (index - p.first) as usize;
            match p.paths[i] {
                Entry::Failed => return Ready::No,
                Entry::Loading(seq) => return Ready::Loading(seq),
                _ if p.ahead > 0 => {
                    // (this block first, and those after it, to the loading threads)
                    self.queue_ahead(p, ino, index);
                    return match p.paths[i] {
                        Entry::Loading(seq) => Ready::Loading(seq),
                        _ => Ready::No, // (no loading thread)
                    };
                }
                _ => {}
            }
            let seq = self.loads_made.fetch_add(1, Ordering::Relaxed);
            let Some((paths, told)) = p.paths[i].claim(seq) else {
                return Ready::No; // (not reached: matched above)
            };
            lock(&self.loading).insert(seq, Vec::new()); // (before the plan's lock goes)
            let len = (p.size - start).min(p.block) as usize;
            let last = start + p.block >= p.size;
            ((ino, p.id, index), len, last, p.piece, paths, told, seq)
        };
        let mut cold = false;
        let got = paths
            .iter()
            .find_map(|path| match Mapped::open(path, len, piece, false) {
                Ok((m, pieces)) => Some((m, pieces, path.clone())),
                Err(why) => {
                    cold |= matches!(why, Unmapped::Cold);
                    None
                }
            });
        if got.is_none() && cold {
            // (a warm file's block let go of from the page cache since it was planned, as
            // memory runs short: read in by a loading thread, as a cold plan's is, the READ
            // parked for it, rather than the file's READs going to Python from here on)
            let load = Load {
                ino,
                id: key.1,
                index,
                start,
                len,
                last,
                piece,
                paths,
                told,
                seq,
            };
            if self.queue(load) {
                return Ready::Loading(seq);
            }
        }
        let _loading = Loading(self, ino, seq); // (the READs parked meanwhile answered)
        self.finish(key, start, last, got, told, true);
        if holds(&lock(&self.held), ino, start) {
            Ready::Held
        } else {
            Ready::No
        }
    }

    /// Park a READ of `ino` for load `seq` of its block, answered once that is done
    /// (`Loading`); if it is done already, answered now (its reply back if not held).
    fn park(
        &self,
        ino: u64,
        seq: u64,
        offset: u64,
        size: usize,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        {
            let mut loading = lock(&self.loading);
            // (`close` answers those parked under the same lock: none is left after it)
            if !self.closed.load(Ordering::Acquire) {
                if let Some(parked) = loading.get_mut(&seq) {
                    parked.push(Parked {
                        reply,
                        offset,
                        size,
                    });
                    return None;
                }
            }
        }
        self.serve(ino, offset, size, reply)
    }

    /// Hold block `key` (at `start`), mapped for its plan (`got`: the mapping, its pieces,
    /// the file it came from; None: not mappable), if that plan still stands (`unhold`
    /// takes plans first, so a file let go of meanwhile, a new listing, holds nothing old
    /// after it). `reached`: a READ of it mapped it, which `loaded` tells (unless `told`
    /// before) and a cold plan reads ahead of; else a loading thread read it in ahead of
    /// its reader, whose first READ does that (`reached`).
    fn finish(
        &self,
        key: LoadKey,
        start: u64,
        last: bool,
        got: Option<(Mapped, Pieces, PathBuf)>,
        told: bool,
        reached: bool,
    ) {
        let (ino, id, index) = key;
        let mut unused = None; // (a mapping not held: unmapped below, outside the locks)
        let gone = {
            let mut plans = lock(&self.plans);
            match (plan_of(&mut plans, ino, id), got) {
                (None, got) => {
                    unused = got.map(|(mapped, ..)| mapped); // (a plan let go of meanwhile)
                    Vec::new()
                }
                (Some(p), None) => {
                    p.paths[(index - p.first) as usize] = Entry::Failed;
                    Vec::new()
                }
                (Some(p), Some((mapped, pieces, path))) => {
                    p.paths[(index - p.first) as usize] = Entry::Mapped {
                        path,
                        told: told || reached,
                    };
                    let mut held = lock(&self.held);
                    if holds(&held, ino, start) {
                        // (held meanwhile, by Python: answered from that, counted there)
                        unused = Some(mapped);
                        Vec::new()
                    } else {
                        let gone = make_room(&mut held, false, 0);
                        held.push(Held {
                            ino,
                            start,
                            last,
                            memory: false,
                            data: Arc::new(Bytes::Map(mapped)),
                            pieces: Some(Arc::new(pieces)),
                            seen: true,
                            ahead: !reached,
                            tell: !reached && !told,
                            index,
                            used: Instant::now(),
                        });
                        drop(held);
                        if reached && !told {
                            lock(&self.loaded).push((ino, index));
                        }
                        if reached {
                            self.queue_ahead(p, ino, index + 1);
                        }
                        gone
                    }
                }
            }
        };
        drop(unused);
        for h in gone {
            let_go(self, h.data); // (a mapping of ours unmapped here, off the event loop)
        }
    }

    /// The first READ of block `index` of `ino`, read in ahead of it (`Held::ahead`):
    /// `loaded` tells it if `tell` (once: whether its plan stands or not), and the file's
    /// plan, if it stands, reads ahead of it.
    fn reached(&self, ino: u64, index: u64, tell: bool) {
        let mut plans = lock(&self.plans);
        if tell {
            lock(&self.loaded).push((ino, index));
        }
        let Some(p) = plan_at(&mut plans, ino, index) else {
            return;
        };
        if let Some(Entry::Mapped { told, .. }) = p.at(index).map(|i| &mut p.paths[i]) {
            *told = true;
        }
        self.queue_ahead(p, ino, index + 1);
    }

    /// Have the loading threads read in the blocks of cold plan `p` (of `ino`) not held,
    /// untried or mapped before and let go of since, up to its `ahead` blocks from block
    /// `from` on (none for a warm plan). Under the plans' lock.
    fn queue_ahead(&self, p: &mut Plan, ino: u64, from: u64) {
        if p.ahead == 0 || self.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(tx) = lock(&self.loads).clone() else {
            return;
        };
        let end = from
            .saturating_add(p.ahead)
            .min(p.first + p.paths.len() as u64);
        for index in from.max(p.first)..end {
            let start = index * p.block;
            let i = (index - p.first) as usize;
            if start >= p.size || holds(&lock(&self.held), ino, start) {
                continue; // (past the file, or held already)
            }
            let seq = self.loads_made.fetch_add(1, Ordering::Relaxed);
            let Some((paths, told)) = p.paths[i].claim(seq) else {
                continue; // (being loaded, or failed)
            };
            lock(&self.loading).insert(seq, Vec::new());
            let load = Load {
                ino,
                id: p.id,
                index,
                start,
                len: (p.size - start).min(p.block) as usize,
                last: start + p.block >= p.size,
                piece: p.piece,
                paths,
                told,
                seq,
            };
            if let Err(mpsc::SendError(back)) = tx.send(load) {
                lock(&self.loading).remove(&seq);
                p.paths[i] = if back.told {
                    Entry::Mapped {
                        path: back.paths[0].clone(),
                        told: true,
                    }
                } else {
                    Entry::Untried(back.paths)
                };
                return;
            }
        }
    }

    /// Hand `load` to the loading threads: false if there are none (the session closed).
    fn queue(&self, load: Load) -> bool {
        let Some(tx) = lock(&self.loads).clone() else {
            return false;
        };
        tx.send(load).is_ok()
    }

    /// A loading thread's work: read block `load` in from its file, and hold it, ahead of
    /// its reader (`finish`), unless its plan is gone; then answer the READs parked for it.
    fn read_in(&self, load: Load) {
        let key = (load.ino, load.id, load.index);
        let _loading = Loading(self, load.ino, load.seq);
        let stands = !self.closed.load(Ordering::Acquire)
            && plan_of(&mut lock(&self.plans), load.ino, load.id).is_some();
        if !stands {
            return; // (its READs, if any, to Python)
        }
        let got = load.paths.iter().find_map(|path| {
            Mapped::open(path, load.len, load.piece, true)
                .ok()
                .map(|(m, pieces)| (m, pieces, path.clone()))
        });
        self.finish(key, load.start, load.last, got, load.told, false);
    }

    /// Hand `job` to a replying thread when it is large, else answer it here: then its
    /// buffer is given back (to be let go of with the GIL held).
    fn dispatch(&self, mut job: Job) -> Option<Answered> {
        if job.len + job.next.as_ref().map_or(0, |&(_, n, _)| n) >= INLINE_REPLY {
            if let Some(tx) = lock(&self.jobs).as_ref() {
                // (a closed channel gives the job back: answered here instead)
                match tx.send(job) {
                    Ok(()) => return None,
                    Err(mpsc::SendError(back)) => job = back,
                }
            }
        }
        Some(answer(job, self))
    }
}

/// Let go of the least lately used blocks `held` (of all, or of those in memory if they
/// are too many) until one more fits: one in `memory` of `n` bytes, or mapped. What went.
fn make_room(held: &mut Vec<Held>, memory: bool, n: usize) -> Vec<Held> {
    let mut gone = Vec::new();
    let in_memory = |held: &Vec<Held>| -> usize {
        held.iter()
            .filter(|h| h.memory)
            .map(|h| h.data.bytes().len())
            .sum()
    };
    while held.len() >= HELD_MAX || (memory && in_memory(held) + n > HELD_MEMORY) {
        let memory_bound = held.len() < HELD_MAX;
        // (a block read in ahead of its reader goes after every one read already)
        let oldest = (0..held.len())
            .filter(|&i| !memory_bound || held[i].memory)
            .min_by_key(|&i| (held[i].ahead, held[i].used));
        match oldest {
            Some(i) => gone.push(held.swap_remove(i)),
            None => break,
        }
    }
    gone
}

/// A block being mapped (`Shared::load`, `Shared::read_in`): once this is dropped, the
/// READs parked for it meanwhile are answered from it, or passed on to Python.
struct Loading<'a>(&'a Shared, u64, u64); // (ino, the load's number)

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        let parked = lock(&self.0.loading).remove(&self.2).unwrap_or_default();
        for p in parked {
            self.0.answer_or_ask(self.1, p.offset, p.size, p.reply);
        }
    }
}

/// One block's part of a READ's answer from the blocks held here (`Shared::answer_held`).
struct Part {
    data: Arc<Bytes>,
    lo: usize, // (where the part starts in the block)
    len: usize,
    pieces: Option<Arc<Pieces>>, // the block's (None: checked whole)
    at: u64,                     // the part's first byte in the file
    first: bool,                 // the first READ in the block that Python has not heard of
    // the first READ of a block read in ahead of it: the block's index, and whether
    // `loaded` is to tell it (`Shared::reached`)
    reached: Option<(u64, bool)>,
}

impl Held {
    /// Bytes `lo..lo + len` of this block, a READ's answer (or a part of it): the block is
    /// used now, and its READ seen.
    fn part(&mut self, lo: usize, len: usize) -> Part {
        self.used = Instant::now();
        let first = !self.seen;
        self.seen = true;
        let reached = self.ahead.then_some((self.index, self.tell));
        self.ahead = false;
        self.tell = false;
        Part {
            data: self.data.clone(),
            lo,
            len,
            pieces: self.pieces.clone(),
            at: self.start + lo as u64,
            first,
            reached,
        }
    }
}

struct Fs {
    shared: Arc<Shared>,
}

impl Fs {
    fn ask(&self, kind: u8, reply: Pending, args: [u64; 3]) {
        self.shared.ask(kind, reply, args);
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // as libfuse asks for them (pyfuse3's defaults); each on its own: a kernel without
        // one refuses only that one
        for flag in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.shared.count(LOOKUP as usize - 1);
        let mut op = Op::new(LOOKUP, Some(Pending::Entry(reply)), [parent.0, 0, 0]);
        op.name = name.as_bytes().to_vec();
        self.shared.push(op);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.count(FORGET as usize - 1);
        self.shared.unhold(Some(ino.0));
        let mut op = Op::new(FORGET, None, [0; 3]);
        op.forgets.push((ino.0, nlookup));
        self.shared.push(op);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.ask(GETATTR, Pending::Attr(reply), [ino.0, 0, 0]);
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Nothing is decided at an open: the mount is read-only (the kernel refuses
        // writers: "ro") and a file is found by inode at its READs.
        self.shared.count(OPEN as usize - 1);
        if self.shared.kernel_opens {
            // Zero-message opens: ENOSYS makes the kernel open every file of the mount by
            // itself from now on, with no OPEN nor RELEASE (its handle 0, the pages kept:
            // it sets `no_open`). A warm file's open+read+close then reaches no one.
            reply.error(Errno::ENOSYS);
        } else {
            // (kernels whose no-open files can deadlock reclaim, `sidecar/fusesession.py`:
            // answered here all the same, handle 0, the pages kept)
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.shared
            .answer_or_ask(ino.0, offset, size as usize, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // nothing to write back; ENOSYS makes the kernel stop sending FLUSH for this mount
        self.shared.count(FLUSH);
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // (not sent once opens take no message: there is no handle to let go of)
        self.shared.count(RELEASE as usize - 1);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.ask(OPENDIR, Pending::Open(reply), [ino.0, 0, 0]);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.ask(READDIR, Pending::Dir(reply), [fh.0, offset, 0]);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.ask(READDIR, Pending::DirPlus(reply), [fh.0, offset, 0]);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.ask(STATFS, Pending::Statfs(reply), [0; 3]);
    }

    // --- a read-only filesystem: every change is refused here ---

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}

/// (ino, mode, nlink, size, blocks, mtime_ns, blksize, uid, gid): an inode's attributes.
type Attrs = (u64, u32, u32, u64, u64, i64, u32, u32, u32);

fn file_attr(a: Attrs) -> FileAttr {
    let (ino, mode, nlink, size, blocks, ns, blksize, uid, gid) = a;
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind(mode),
        perm: (mode & 0o7777) as u16,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize,
        flags: 0,
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

fn ttl(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// The answer to one request: given exactly once (a second answer raises
/// RuntimeError). Dropped unanswered, it answers EIO.
#[pyclass(module = "fluidfed._fuse")]
struct Reply {
    pending: Mutex<Option<Pending>>,
    shared: Arc<Shared>,
}

impl Reply {
    fn take(&self) -> PyResult<Pending> {
        lock(&self.pending)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this request was answered already"))
    }

    fn wrong(what: &str) -> PyErr {
        PyValueError::new_err(format!("{what} does not answer this request"))
    }

    /// A READ's answer: by a replying thread when large, else here.
    fn send(
        &self,
        data: PyBuffer<u8>,
        lo: usize,
        len: usize,
        check: Option<Check>,
    ) -> PyResult<()> {
        let reply = match self.take()? {
            Pending::Data(r) => r,
            other => return Err(Self::back(other, "data")),
        };
        let job = Job {
            reply,
            data: Arc::new(Bytes::Py(data)),
            lo,
            len,
            check,
            next: None,
        };
        drop(self.shared.dispatch(job)); // (answered here: let go of now, the GIL held)
        Ok(())
    }
}

#[pymethods]
impl Reply {
    fn entry(&self, attrs: Attrs, entry_ttl: f64, attr_ttl: f64) -> PyResult<()> {
        match self.take()? {
            Pending::Entry(r) => {
                r.entry_with_ttls(
                    &ttl(attr_ttl),
                    &ttl(entry_ttl),
                    &file_attr(attrs),
                    Generation(0),
                );
                Ok(())
            }
            other => Err(Self::back(other, "entry")),
        }
    }

    fn attr(&self, attrs: Attrs, attr_ttl: f64) -> PyResult<()> {
        match self.take()? {
            Pending::Attr(r) => {
                r.attr(&ttl(attr_ttl), &file_attr(attrs));
                Ok(())
            }
            other => Err(Self::back(other, "attr")),
        }
    }

    /// An OPENDIR's handle (file OPENs are answered by the session).
    fn open(&self, fh: u64) -> PyResult<()> {
        match self.take()? {
            Pending::Open(r) => {
                r.opened(FileHandle(fh), FopenFlags::empty());
                Ok(())
            }
            other => Err(Self::back(other, "open")),
        }
    }

    /// The bytes of a READ: written by a replying thread (the buffer held until then)
    /// when large, else here.
    fn data(&self, data: PyBuffer<u8>) -> PyResult<()> {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("data takes a contiguous buffer"));
        }
        let len = data.len_bytes();
        self.send(data, 0, len, None)
    }

    /// `size` bytes at `lo` of `block`, a block not checked whole since it was mapped:
    /// written once each `piece` bytes of it that they lie in matches its CRC in `pieces`
    /// (4 bytes each, big-endian, as a block file's trailer has them), by the thread that
    /// copies them (their bytes then in its core's caches); a READ whose piece does not
    /// match comes back from `Session.take` as (REREAD, reply, ino, offset, size). `fd`:
    /// the mapped file, open, to ask whether those pieces lie in the page cache.
    #[allow(clippy::too_many_arguments)]
    fn data_checked(
        &self,
        block: PyBuffer<u8>,
        lo: usize,
        size: usize,
        pieces: &[u8],
        piece: usize,
        ino: u64,
        offset: u64,
        fd: i32,
    ) -> PyResult<()> {
        if !block.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "data_checked takes a contiguous buffer",
            ));
        }
        let check = Check::new(
            block.len_bytes(),
            lo,
            size,
            pieces,
            piece,
            fd,
            (ino, offset),
        )?;
        self.send(block, lo, size, Some(check))
    }

    /// The bytes of a READ written now, in the calling thread, without the GIL: for a
    /// buffer valid only during the call (a thread's reused one).
    fn data_now(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        if !data.is_c_contiguous() {
            return Err(PyValueError::new_err("data_now takes a contiguous buffer"));
        }
        match self.take()? {
            Pending::Data(r) => {
                py.allow_threads(|| r.data(view(&data)));
                Ok(())
            }
            other => Err(Self::back(other, "data_now")),
        }
    }

    /// A READ of `size` bytes at `offset` of `ino` that came to Python handed back to the
    /// session, once: answered from the blocks it holds, or maps or reads in where the
    /// file's plans say (`Shared::load`), as if it had come after them; else it comes back
    /// from `Session.take` as (BACK, reply, ino, offset, size), for Python to answer. For
    /// a READ of a planned block that reached the session just before its reader was
    /// handed over to it (the kernel sends a few at once), or one that ran past its
    /// reader's plan: read by Python, that block would be read twice, there and by the
    /// session for the next READ. Counted once, where it is answered.
    fn session(&self, py: Python<'_>, ino: u64, offset: u64, size: usize) -> PyResult<()> {
        let reply = match self.take()? {
            Pending::Data(r) => r,
            other => return Err(Self::back(other, "session")),
        };
        let shared = &*self.shared;
        // (counted as it was asked of Python: counted again wherever it ends)
        shared.counts[READ as usize - 1].fetch_sub(1, Ordering::Relaxed);
        py.allow_threads(|| {
            let Some(reply) = shared.serve(ino, offset, size, reply) else {
                return;
            };
            let Some(reply) = shared.load(ino, offset, size, reply) else {
                return; // (answered, or parked for its block: `Loading`)
            };
            shared.count(READ as usize - 1);
            shared.push(Op::new(
                BACK,
                Some(Pending::Data(reply)),
                [ino, offset, size as u64],
            ));
        });
        Ok(())
    }

    /// The request failed with `errno` (positive).
    fn error(&self, errno: i32) -> PyResult<()> {
        if errno <= 0 {
            return Err(PyValueError::new_err(format!(
                "errno must be positive, got {errno}"
            )));
        }
        self.take()?.error(Errno::from_i32(errno));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn statfs(
        &self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) -> PyResult<()> {
        match self.take()? {
            Pending::Statfs(r) => {
                r.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize);
                Ok(())
            }
            other => Err(Self::back(other, "statfs")),
        }
    }

    /// One directory entry; `next` is the offset the kernel asks from for the entries
    /// after it. False once the reply is full: this entry was not added.
    fn add(&self, name: &[u8], attrs: Attrs, entry_ttl: f64, next: u64) -> PyResult<bool> {
        let mut guard = lock(&self.pending);
        let full = match guard.as_mut() {
            Some(Pending::DirPlus(r)) => r.add(
                INodeNo(attrs.0),
                next,
                OsStr::from_bytes(name),
                &ttl(entry_ttl),
                &file_attr(attrs),
                Generation(0),
            ),
            Some(Pending::Dir(r)) => r.add(
                INodeNo(attrs.0),
                next,
                kind(attrs.1),
                OsStr::from_bytes(name),
            ),
            Some(_) => return Err(Self::wrong("add")),
            None => return Err(PyRuntimeError::new_err("this request was answered already")),
        };
        Ok(!full)
    }

    /// The directory entries added so far.
    fn done(&self) -> PyResult<()> {
        match self.take()? {
            Pending::DirPlus(r) => r.ok(),
            Pending::Dir(r) => r.ok(),
            other => return Err(Self::back(other, "done")),
        }
        Ok(())
    }
}

impl Reply {
    /// A wrong kind of answer: the request is answered EIO (it was taken), and Python
    /// hears of the mistake.
    fn back(p: Pending, what: &str) -> PyErr {
        p.error(Errno::EIO);
        Self::wrong(what)
    }
}

fn view(b: &PyBuffer<u8>) -> &[u8] {
    if b.len_bytes() == 0 {
        return &[];
    }
    // SAFETY: a contiguous buffer exported to us (checked by the caller), alive and
    // unmoved while the PyBuffer is held
    unsafe { std::slice::from_raw_parts(b.buf_ptr() as *const u8, b.len_bytes()) }
}

fn os_error(err: io::Error) -> PyErr {
    PyOSError::new_err((err.raw_os_error().unwrap_or(libc::EIO), err.to_string()))
}

/// A mounted filesystem whose requests Python answers: `fileno` turns readable when
/// `take` has requests to give.
#[pyclass(module = "fluidfed._fuse")]
struct Session {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    background: Mutex<Option<fuser::BackgroundSession>>,
    notifier: Notifier,
    repliers: Mutex<Vec<JoinHandle<()>>>,
}

fn mount_options(options: Vec<String>) -> (Vec<MountOption>, SessionACL) {
    let mut acl = SessionACL::Owner;
    let mut out = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => out.push(MountOption::RO),
            "default_permissions" => out.push(MountOption::DefaultPermissions),
            "allow_other" => acl = SessionACL::All,
            "allow_root" => acl = SessionACL::RootAndOwner,
            _ => match o.split_once('=') {
                // (subtype= as a kernel option: fuser's own Subtype names the device only,
                // and the type /proc/mounts shows would be "fuse", not "fuse.<subtype>")
                Some(("fsname", v)) => out.push(MountOption::FSName(v.to_string())),
                _ => out.push(MountOption::CUSTOM(o)),
            },
        }
    }
    (out, acl)
}

#[pymethods]
impl Session {
    /// Mount at `mountpoint` (the kernel's INIT answered before this returns); `threads`
    /// read requests, `repliers` write large READ answers; with `kernel_opens` the kernel
    /// opens files by itself (OPEN answered ENOSYS), else OPENs are answered here.
    #[new]
    #[pyo3(signature = (mountpoint, options, threads=2, repliers=2, kernel_opens=true, loaders=4))]
    fn new(
        py: Python<'_>,
        mountpoint: PathBuf,
        options: Vec<String>,
        threads: usize,
        repliers: usize,
        kernel_opens: bool,
        loaders: usize,
    ) -> PyResult<Self> {
        // SAFETY: eventfd returns a new descriptor or -1
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error(io::Error::last_os_error()));
        }
        // SAFETY: just created, owned by nothing else
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            counts: Default::default(),
            kernel_opens,
            wake,
            closed: AtomicBool::new(false),
            jobs: Mutex::new(Some(tx)),
            done: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            plans: Mutex::new(HashMap::new()),
            planned: AtomicU64::new(0),
            loaded: Mutex::new(Vec::new()),
            loading: Default::default(),
            loads_made: AtomicU64::new(0),
            loads: Mutex::new(None),
            served: Default::default(),
        });
        let (mount_options, acl) = mount_options(options);
        let mut config = Config::default();
        config.mount_options = mount_options;
        config.acl = acl;
        config.n_threads = Some(threads.max(1));
        config.clone_fd = true;
        let fs = Fs {
            shared: shared.clone(),
        };
        let at = mountpoint.clone();
        let background = py
            .allow_threads(move || fuser::Session::new(fs, &at, &config)?.spawn())
            .map_err(os_error)?;
        let notifier = background.notifier();
        let (loads, to_load) = mpsc::channel::<Load>();
        let to_load = Arc::new(Mutex::new(to_load));
        for i in 0..loaders {
            let to_load = to_load.clone();
            let shared = shared.clone();
            // (not joined: one reading from the disk at unmount ends with the channel)
            std::thread::Builder::new()
                .name(format!("fuse-load-{i}"))
                .spawn(move || loop {
                    let load = lock(&to_load).recv();
                    let Ok(load) = load else { return };
                    // (a panic ends this load, its READs passed on as its `Loading` goes,
                    // not the thread: the loads queued behind it are still read)
                    let read = std::panic::AssertUnwindSafe(|| shared.read_in(load));
                    let _ = std::panic::catch_unwind(read);
                })
                .map_err(os_error)?;
        }
        if loaders > 0 {
            *lock(&shared.loads) = Some(loads);
        }
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..repliers.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("fuse-reply-{i}"))
                .spawn(move || loop {
                    let job = lock(&rx).recv();
                    let Ok(job) = job else { return };
                    let answered = answer(job, &shared);
                    // Python's let go of by the next `take` (the loop calls it at least
                    // once a second: a block's memory is not held on by a mount gone idle)
                    let_go_answered(&shared, answered);
                })
                .map_err(os_error)?;
            handles.push(h);
        }
        Ok(Session {
            shared,
            mountpoint,
            background: Mutex::new(Some(background)),
            notifier,
            repliers: Mutex::new(handles),
        })
    }

    /// The descriptor to watch: readable when requests wait.
    fn fileno(&self) -> i32 {
        self.shared.wake.as_raw_fd()
    }

    /// The requests waiting, as tuples: (LOOKUP, reply, parent, name), (GETATTR, reply,
    /// ino), (READ, reply, ino, offset, size), (OPENDIR, reply, ino), (READDIR, reply,
    /// fh, offset), (STATFS, reply), (FORGET, None, [(ino, nlookup), ...]). OPEN, RELEASE
    /// and FLUSH are answered by the session (counted in `requests`).
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut counter = [0u8; 8];
        // SAFETY: our eventfd, into 8 bytes of ours; EAGAIN (nothing new) is fine
        unsafe { libc::read(self.shared.wake.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
        let ops = std::mem::take(&mut *lock(&self.shared.queue));
        let written = std::mem::take(&mut *lock(&self.shared.done));
        drop(written); // released with the GIL held, outside the lock
        let idle: Vec<Held> = {
            let mut held = lock(&self.shared.held);
            let (idle, kept) = std::mem::take(&mut *held).into_iter().partition(|h| {
                let idle = if h.ahead { HELD_AHEAD_IDLE } else { HELD_IDLE };
                h.used.elapsed() >= idle
            });
            *held = kept;
            idle
        };
        drop(idle);
        let out = PyList::empty(py);
        for op in ops {
            let [a, b, c] = op.args;
            let reply: PyObject = match op.reply {
                Some(p) => Py::new(
                    py,
                    Reply {
                        pending: Mutex::new(Some(p)),
                        shared: self.shared.clone(),
                    },
                )?
                .into_any(),
                None => py.None(),
            };
            let t = match op.kind {
                LOOKUP => {
                    let name = PyBytes::new(py, &op.name);
                    PyTuple::new(
                        py,
                        [
                            op.kind.into_pyobject(py)?.into_any(),
                            reply.into_bound(py),
                            a.into_pyobject(py)?.into_any(),
                            name.into_any(),
                        ],
                    )?
                }
                READ | REREAD | SEEN | BACK => PyTuple::new(
                    py,
                    [
                        op.kind.into_pyobject(py)?.into_any(),
                        reply.into_bound(py),
                        a.into_pyobject(py)?.into_any(),
                        b.into_pyobject(py)?.into_any(),
                        c.into_pyobject(py)?.into_any(),
                    ],
                )?,
                READDIR => PyTuple::new(
                    py,
                    [
                        op.kind.into_pyobject(py)?.into_any(),
                        reply.into_bound(py),
                        a.into_pyobject(py)?.into_any(),
                        b.into_pyobject(py)?.into_any(),
                    ],
                )?,
                STATFS => PyTuple::new(
                    py,
                    [op.kind.into_pyobject(py)?.into_any(), reply.into_bound(py)],
                )?,
                FORGET => {
                    let list = PyList::new(py, op.forgets)?;
                    PyTuple::new(
                        py,
                        [
                            op.kind.into_pyobject(py)?.into_any(),
                            reply.into_bound(py),
                            list.into_any(),
                        ],
                    )?
                }
                _ => PyTuple::new(
                    py,
                    [
                        op.kind.into_pyobject(py)?.into_any(),
                        reply.into_bound(py),
                        a.into_pyobject(py)?.into_any(),
                    ],
                )?,
            };
            out.append(t)?;
        }
        Ok(out)
    }

    /// Drop the kernel's cached pages and attributes of `ino`. A kernel that holds no such
    /// inode is not an error.
    fn invalidate_inode(&self, py: Python<'_>, ino: u64) -> PyResult<()> {
        self.shared.unhold(Some(ino)); // (before the kernel asks again)
        let n = &self.notifier;
        match py.allow_threads(|| n.inval_inode(INodeNo(ino), 0, 0)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(os_error),
        }
    }

    /// Forget `name` in directory `parent` (its dentry: the next open looks it up again).
    /// A kernel that holds no such entry is not an error.
    fn invalidate_entry(&self, py: Python<'_>, parent: u64, name: &[u8]) -> PyResult<()> {
        let n = &self.notifier;
        let name = OsStr::from_bytes(name);
        match py.allow_threads(|| n.inval_entry(INodeNo(parent), name)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(os_error),
        }
    }

    /// Answer the READs of file `ino` that lie in `block` (its bytes from `start` on)
    /// here from now on, each checked by the pieces it covers as `Reply.data_checked`
    /// does if the block is mapped from a worker's file and was not checked whole
    /// (`pieces`, `piece`, `fd` as that takes them; None: checked), until the block is
    /// let go of (`unhold`, `invalidate_inode`, the kernel's FORGET, a piece that fails
    /// its check, HELD_IDLE unused, or HELD_MAX others held since; a block in the
    /// sidecar's `memory`, once HELD_MEMORY bytes of others are). `last`: it is the
    /// file's last block. `seen`: Python answered a READ in it (else the first READ
    /// answered here comes back from `take` as SEEN).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (ino, start, block, last, pieces, piece, fd, seen, memory=false))]
    fn hold(
        &self,
        ino: u64,
        start: u64,
        block: PyBuffer<u8>,
        last: bool,
        pieces: Option<&[u8]>,
        piece: usize,
        fd: i32,
        seen: bool,
        memory: bool,
    ) -> PyResult<()> {
        if !block.is_c_contiguous() {
            return Err(PyValueError::new_err("hold takes a contiguous buffer"));
        }
        let n = block.len_bytes();
        if (memory && n > HELD_MEMORY) || self.shared.closed.load(Ordering::Acquire) {
            return Ok(()); // (not held: Python answers its READs, or the session is closing)
        }
        let pieces = match pieces {
            Some(p) => Some(Arc::new(Pieces::parse(block.len_bytes(), p, piece, fd)?)),
            None => None,
        };
        let gone = {
            let mut held = lock(&self.shared.held);
            let mut gone: Vec<Held> = Vec::new();
            if let Some(i) = held.iter().position(|h| h.ino == ino && h.start == start) {
                gone.push(held.swap_remove(i));
            }
            gone.extend(make_room(&mut held, memory, n));
            held.push(Held {
                ino,
                start,
                last,
                memory,
                data: Arc::new(Bytes::Py(block)),
                pieces,
                seen,
                ahead: false,
                tell: false,
                index: 0,
                used: Instant::now(),
            });
            gone
        };
        drop(gone); // (the GIL held)
        Ok(())
    }

    /// Map the blocks of file `ino` (`size` bytes in blocks of `block`) from block `first`
    /// on here, from its workers' block files on this node, each once its first READ
    /// comes (unless held: `hold`), and hold them as `hold` would, checked by the pieces of
    /// `piece` bytes each answer covers: `paths` gives, for each block, where its file may
    /// lie (tried in turn; none: its READs are Python's). A block file not whole in the
    /// page cache, missing, or not of that format is not mapped: its READs come to Python,
    /// as do those past the plan's last block. No SEEN comes for these blocks (Python is
    /// told which were mapped, `loaded`, as their reader reaches them). A file keeps a
    /// plan for each of its readers at another place in it: this one replaces those it
    /// plans a block of and the one from block `replaces` (its reader's plan before), and
    /// the others stand, up to PLANS_PER_FILE, the one made first let go of past that.
    /// No `paths`: all of the file's plans let go of (`unplan`); so are they with its
    /// held blocks (`unhold`, `invalidate_inode`, FORGET, a piece that fails its check).
    ///
    /// With `ahead`, a cold file's plan: its files are read in from the disk (into folios
    /// of a huge page, as `blockfile.read_cold_block_file` reads them) by the loading
    /// threads, up to `ahead` blocks ahead of the last its reader reached (from the first
    /// planned at once), and held for its READs, which wait for one being read in.
    #[pyo3(signature = (ino, first, block, size, piece, paths, ahead=0, replaces=None))]
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        ino: u64,
        first: u64,
        block: u64,
        size: u64,
        piece: usize,
        paths: Vec<Vec<PathBuf>>,
        ahead: u64,
        replaces: Option<u64>,
    ) -> PyResult<()> {
        if block == 0 || piece == 0 || !piece.is_multiple_of(4096) {
            return Err(PyValueError::new_err(format!(
                "blocks of {block} bytes in pieces of {piece}: expected both more than 0, \
                 pieces a multiple of 4096"
            )));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        if paths.is_empty() {
            drop(lock(&self.shared.plans).remove(&ino)); // (let go of)
            return Ok(());
        }
        let id = self.shared.planned.fetch_add(1, Ordering::Relaxed);
        let plan = Plan {
            id,
            first,
            block,
            size,
            piece,
            ahead,
            paths: paths
                .into_iter()
                .map(|p| {
                    if p.is_empty() {
                        Entry::Failed
                    } else {
                        Entry::Untried(p)
                    }
                })
                .collect(),
        };
        let mut plans = lock(&self.shared.plans);
        let of = plans.entry(ino).or_default();
        // (those it replaces go: its reader's plan before, those it overlaps; the one made
        // first let go of past PLANS_PER_FILE)
        let (old, mut kept): (Vec<Plan>, Vec<Plan>) = std::mem::take(of)
            .into_iter()
            .partition(|p| p.overlaps(&plan) || replaces == Some(p.first));
        if kept.len() >= PLANS_PER_FILE {
            kept.remove(0);
        }
        kept.push(plan);
        *of = kept;
        if let Some(p) = of.last_mut() {
            // (read ahead from the first block of its own: those before, Python's)
            let from = p.paths.iter().position(|e| matches!(e, Entry::Untried(_)));
            if let Some(i) = from {
                self.shared.queue_ahead(p, ino, first + i as u64);
            }
        }
        drop(plans);
        drop(old);
        Ok(())
    }

    /// Let go of the plan of file `ino` that plans block `index` (its reader's: the other
    /// readers' stand), or of all of the file's plans; their held blocks stay.
    #[pyo3(signature = (ino, index=None))]
    fn unplan(&self, ino: u64, index: Option<u64>) {
        let mut plans = lock(&self.shared.plans);
        let gone = match (index, plans.get_mut(&ino)) {
            (Some(i), Some(of)) => match planning(of, i) {
                Some(at) => {
                    let p = of.remove(at);
                    if of.is_empty() {
                        plans.remove(&ino);
                    }
                    vec![p]
                }
                None => Vec::new(),
            },
            (Some(_), None) => Vec::new(),
            (None, _) => plans.remove(&ino).unwrap_or_default(),
        };
        drop(plans);
        drop(gone);
    }

    /// The blocks mapped here from plans (`plan`) since the last call: (ino, block).
    fn loaded(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *lock(&self.shared.loaded))
    }

    /// Let go of the blocks held for `ino` (`hold`), or of all of them.
    #[pyo3(signature = (ino=None))]
    fn unhold(&self, ino: Option<u64>) {
        self.shared.unhold(ino);
        let gone = std::mem::take(&mut *lock(&self.shared.done));
        drop(gone); // (the GIL held, not the lock: letting go of a mapping may run Python)
    }

    /// (READs, bytes) answered from held blocks since the last call.
    fn served(&self) -> (u64, u64) {
        let [reads, bytes] = &self.shared.served;
        (
            reads.swap(0, Ordering::Relaxed),
            bytes.swap(0, Ordering::Relaxed),
        )
    }

    /// The requests the kernel sent so far, by kind ("open", "read", ...).
    fn requests(&self) -> Vec<(&'static str, u64)> {
        COUNTED
            .iter()
            .zip(&self.shared.counts)
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Take no more requests: those queued, and any that come, are answered ENOTCONN.
    fn close(&self) {
        self.shared.close();
        self.shared.unhold(None);
    }

    /// `close`, detach the mount (lazily: files still open keep it until closed) and wait
    /// for the session's threads, up to a moment (threads still serving open files then
    /// end with the process). The replying threads finish what they were given.
    fn unmount(&self, py: Python<'_>) -> PyResult<()> {
        self.close();
        let Some(bg) = lock(&self.background).take() else {
            return Ok(());
        };
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let handles = std::mem::take(&mut *lock(&self.repliers));
        let shared = self.shared.clone();
        py.allow_threads(move || {
            // SAFETY: a NUL-terminated path
            let detached = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                // Detached, fuser's own unmount must not run while the connection lives: it
                // would unmount the path again, not lazily, taking whatever lies under the
                // mount (in a pod the volume the mountpoint is). Joined, the session ended
                // because the kernel ended the connection, and fuser finds nothing to
                // unmount. Not detached (no right to, as a user mounting through
                // fusermount3): fuser unmounts as it does.
                let r = if detached {
                    bg.join()
                } else {
                    bg.umount_and_join()
                };
                let _ = tx.send(r);
            });
            let _ = rx.recv_timeout(JOIN_WITHIN);
            drop(lock(&shared.jobs).take()); // the replying threads stop once it is empty
            for h in handles {
                let _ = h.join();
            }
        });
        let written = std::mem::take(&mut *lock(&self.shared.done));
        drop(written);
        Ok(())
    }
}

/// Whether `size` bytes at `lo` of a mapped block file pass the check a replying thread
/// makes before it answers a READ with them (`Reply.data_checked`): the pieces they lie
/// in in the page cache (or faulted in, where the kernel cannot say) and matching their
/// CRCs. The same code, for tests and tools.
#[pyfunction]
fn pieces_hold(
    py: Python<'_>,
    block: PyBuffer<u8>,
    lo: usize,
    size: usize,
    pieces: &[u8],
    piece: usize,
    fd: i32,
) -> PyResult<bool> {
    if !block.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "pieces_hold takes a contiguous buffer",
        ));
    }
    let check = Check::new(block.len_bytes(), lo, size, pieces, piece, fd, (0, 0))?;
    let bytes = view(&block);
    Ok(py.allow_threads(|| check.holds(bytes, lo, size)))
}

/// Whether the kernel refused cachestat to this process, or this build has no number for
/// it (so the pieces a READ's answer covers are faulted in before their check, which costs
/// the event loop's mappings, and no block is planned: `Session.plan`).
#[pyfunction]
fn cachestat_refused() -> bool {
    SYS_CACHESTAT.is_none() || CACHESTAT_REFUSED.load(Ordering::Relaxed)
}

#[pymodule]
fn _fuse(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pieces_hold, m)?)?;
    m.add_function(wrap_pyfunction!(cachestat_refused, m)?)?;
    m.add_class::<Session>()?;
    m.add_class::<Reply>()?;
    m.add("LOOKUP", LOOKUP)?;
    m.add("GETATTR", GETATTR)?;
    m.add("READ", READ)?;
    m.add("REREAD", REREAD)?;
    m.add("PLANS_PER_FILE", PLANS_PER_FILE)?;
    m.add("SEEN", SEEN)?;
    m.add("BACK", BACK)?;
    m.add("OPENDIR", OPENDIR)?;
    m.add("READDIR", READDIR)?;
    m.add("STATFS", STATFS)?;
    m.add("FORGET", FORGET)?;
    Ok(())
}
