"""The preflight's report: every finding, what to run under each one missing, and only the
blocking ones stop setup."""

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
