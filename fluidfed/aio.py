"""How every fluidfed process runs its event loop: `run(main())`, on uvloop.

Two reasons, each measured:
- the hub's TLS and sockets cost a fraction of asyncio's on uvloop (bench/hub_fanout.py;
  README "Measured design decisions");
- OpenDAL's Tokio threads complete a Python future with `loop.call_soon_threadsafe`. asyncio's
  version releases the GIL to write its wake-up byte, so a thread still inside it when the
  main thread returns races the interpreter's shutdown: CPython 3.11 ends a thread that asks
  for the GIL back by then with `pthread_exit`, which aborts a Rust thread (SIGABRT, exit
  code 134, after the command had succeeded). 10 of 60 short processes that wrote 200
  objects through OpenDAL aborted so on asyncio, 0 of 120 on uvloop, whose wake-up keeps
  the GIL. A sidecar container that ends with 134 marks the pod's run failed.

`FLUIDFED_EVENT_LOOP=asyncio` opts out (to compare, or to debug with asyncio's tools).

`run` also raises the process's soft limit on open files to its hard limit first
(`open_files_to_hard_limit`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fluidfed.errors import FluidfedError

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless FLUIDFED_EVENT_LOOP=asyncio (None: asyncio's own)."""
    choice = os.environ.get("FLUIDFED_EVENT_LOOP", "uvloop")
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise FluidfedError(
            f"FLUIDFED_EVENT_LOOP={choice!r} in the environment: set it to 'uvloop' (the "
            "default) or 'asyncio', or unset it"
        )
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


NR_OPEN = "/proc/sys/fs/nr_open"  # the kernel's ceiling on a process's open files


def open_files_to_hard_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, as Go's runtime
    does for every program: a container runtime may start a process at 1,024 under a hard
    limit of 524,288 (containerd 2.x, as systemd does), and a server here holds a
    descriptor per connection (the hub one per agent's watch, a worker one per reader)
    and per block it maps from a file (a sidecar: two). Nothing here watches descriptors
    with select(2), which cannot see one numbered 1,024 or more. Children inherit it (Go's
    runtime puts the old one back for the programs it starts; fusermount3 and umount, the
    only ones a daemon here starts, do not mind). The soft limit after (the same where the
    kernel refuses: it is only raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    want = hard
    try:
        with open(NR_OPEN) as f:
            ceiling = int(f.read())
    except (OSError, ValueError):
        ceiling = None
    # (the kernel refuses a hard limit above nr_open: one above it comes down to it)
    if ceiling is not None and (hard == resource.RLIM_INFINITY or hard > ceiling):
        want = ceiling
    if want == resource.RLIM_INFINITY or soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (OSError, ValueError):
        return soft
    return want


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop (see the module's docstring), as asyncio.run,
    with the soft limit on open files at the hard one."""
    open_files_to_hard_limit()
    try:
        factory = loop_factory()
    except BaseException:
        main.close()  # never started: no "was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """For a server once it has started: move what start-up made (modules, classes,
    functions, a loaded catalog: ~65k objects in the hub, nearly all the garbage collector
    tracks before clients connect) out of the collector's reach, so a full collection walks
    only what serving made since; and collect the youngest objects every 10,000 allocations
    instead of 700, so objects alive for one request are freed by their count before a
    collection can promote them (every promotion brings the next full collection closer).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
