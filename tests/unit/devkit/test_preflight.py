"""The preflight's report: every finding, what to run under each one missing, and only the
blocking ones stop setup."""

import shutil
from pathlib import Path

import pytest

from devkit import preflight
from devkit.preflight import Finding


def test_the_report_says_what_is_missing_and_what_to_run() -> None:
    findings = [
        Finding("Python 3.11 in a venv", True),
        Finding(
            "Debian packages missing: fio",
            False,
            "sudo apt-get install -y fio",
            detail="fio: the benchmarks",
        ),
        Finding("not root", False, "run the tests as root", blocks=False),
    ]
    assert preflight.report(findings) == [
        "  ok      Python 3.11 in a venv",
        "  MISSING Debian packages missing: fio",
        "          (fio: the benchmarks)",
        "          -> sudo apt-get install -y fio",
        "  note    not root",
        "          -> run the tests as root",
    ]
    assert preflight.blocking(findings) == [findings[1]]


def test_every_package_says_what_it_is_for() -> None:
    assert all(why for why in preflight.PACKAGES.values())
    assert {"fuse3", "libfuse3-dev", "pkg-config", "gcc"} <= set(preflight.PACKAGES)


def test_a_toolchain_missing_or_too_old_says_so_and_what_to_install() -> None:
    what, fix = "Rust >= 1.79 builds the TLS engine", "install Rust with rustup"
    missing = preflight._toolchain("cargo", None, (1, 79), what, fix, "Rust {}: ok")
    assert (missing.what, missing.ok, missing.fix) == (f"{what}: no `cargo` on PATH", False, fix)
    old = preflight._toolchain("cargo", (1, 70), (1, 79), what, fix, "Rust {}: ok")
    assert (old.what, old.ok) == (f"{what}: `cargo` is 1.70", False)
    assert preflight._toolchain("cargo", (1, 95), (1, 79), what, fix, "Rust {}: ok") == Finding(
        "Rust 1.95: ok", True
    )


def test_room_for_the_tests_own_filesystem_is_checked_before_they_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As root the tests take 16 GiB for a filesystem of their own: a disk without it is a
    note saying how much is free where and what to do; not root, nothing is taken."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("FLUIDFED_TEST_DISK_GIB", raising=False)
    ok = preflight.room_for_tests(True, free=40 * 2**30)
    assert ok.ok and ok.what == f"tests' own filesystem: 40 GiB free in {tmp_path}, 16 GiB taken"
    short = preflight.room_for_tests(True, free=10 * 2**30)
    assert not short.ok and not short.blocks
    assert f"16 GiB wanted, 10.0 GiB free in {tmp_path}" in short.what
    assert "FLUIDFED_TEST_DISK_GIB" in short.fix
    monkeypatch.setenv("FLUIDFED_TEST_DISK_GIB", "8")
    assert preflight.room_for_tests(True, free=10 * 2**30).ok
    assert preflight.room_for_tests(False, free=0).ok
    assert preflight.room_for_tests(True).ok == (shutil.disk_usage(tmp_path).free >= 8 * 2**30)
