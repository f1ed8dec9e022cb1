"""The harness's child processes: a deadline on the ready line that a silent child cannot
escape, and pipes drained for the child's whole life."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from devkit.local import processes

READY = re.compile(r"listening on (http://\S+)")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_silent_child_is_killed_at_the_deadline_with_its_last_output() -> None:
    proc = subprocess.Popen(
        python("import sys, time; print('starting up', flush=True); time.sleep(600)"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    t0 = time.monotonic()
    with pytest.raises(
        RuntimeError, match=r"(?s)sleeper did not become ready in 1.5s.*starting up"
    ):
        processes.ready_line(proc, READY, "sleeper", 1.5)
    assert time.monotonic() - t0 < 10
    assert proc.poll() is not None  # killed, not left behind


def test_a_child_that_exits_before_its_ready_line_shows_its_stderr() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)daemon exited with 3.*bad flag --x"):
        processes.launch(
            python("import sys; sys.stderr.write('bad flag --x\\n'); sys.exit(3)"),
            READY,
            "daemon",
            30,
        )


def test_the_ready_line_is_found_among_other_output() -> None:
    proc, m, _ = processes.launch(
        python("print('a\\nb\\nlistening on http://127.0.0.1:1', flush=True)"), READY, "d", 30
    )
    assert m.group(1) == "http://127.0.0.1:1"
    processes.stop_process(proc, signal.SIGTERM, 10)


def test_a_chatty_child_never_blocks_on_a_full_pipe() -> None:
    """Far more than a pipe holds (64 KiB), written to both pipes after the ready line:
    the child gets to the end only if somebody reads them."""
    chatty = (
        "import sys\n"
        "print('listening on http://127.0.0.1:9', flush=True)\n"
        "for i in range(16384):\n"
        "    sys.stderr.write(f'{i:063d}\\n')\n"
        "    sys.stdout.write(f'{i:063d}\\n')\n"
        "sys.stderr.write('the end\\n')\n"
    )
    proc, _, errors = processes.launch(python(chatty), READY, "chatty", 30)
    assert proc.wait(timeout=30) == 0  # 1 MiB on each pipe, and it did not block
    assert errors.wait_closed(10)
    assert errors.tail(1) == "the end\n"
    processes.stop_process(proc, signal.SIGTERM, 10)


def test_stop_pids_leaves_none_running_those_that_ignore_sigterm_killed() -> None:
    """`stop_pids` (`local s3 down`, `local etcd down`) returns once every process is
    gone: one that stops on SIGTERM (a child of the caller's: reaped, not left a zombie
    that still answers signal 0) and one that ignores it (killed after the timeout)."""
    polite = subprocess.Popen(["sleep", "30"])
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo set; while :; do sleep 0.1; done"], stdout=subprocess.PIPE
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"set\n"
    processes.stop_pids([polite.pid, stubborn.pid], timeout=1.0)
    assert not processes.pid_alive(polite.pid)
    assert not processes.pid_alive(stubborn.pid)
    stubborn.stdout.close()
