"""What this machine lacks for the demo and the tests, and what to run about it, checked
before anything starts: Debian packages, Go (only while the local-cluster binaries are not
built), /dev/fuse, root, the Python environment, the FUSE binding and room for the
tests' own filesystem.

Standard library only: `scripts/setup` runs it before the package is installed, from the
repository's root:

    python3 -m devkit.preflight setup       every finding; exit 2 if one blocks
    python3 -m devkit.preflight packages    the missing Debian packages' names, one a line

`fluidfed demo` runs the `demo` checks first and stops with the same list.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from devkit.local import binaries, scratch

# what each Debian package is for (scripts/setup installs them as root)
PACKAGES = {
    "fuse3": "fusermount3 and the FUSE tools",
    "libfuse3-dev": "pyfuse3 is built against libfuse3 (it ships no wheels)",
    "pkg-config": "pyfuse3's build finds libfuse3 with it",
    "gcc": "pyfuse3's build; runc (cgo); the real node's static pause",
    "libc6-dev": "the C builds above",
    "libseccomp-dev": "runc (cgo, seccomp) for the real node",
    "fio": "the benchmarks",
    "s3fs": "bench/peers.py (a peer FUSE client)",
    "rclone": "bench/peers.py (a peer FUSE client)",
    "umoci": "the fluidfed image without Docker",
    "mmdebstrap": "the fluidfed image without Docker",
    "iproute2": "the real node's network namespace",
    "openssl": "the tests' TLS 1.3 key updates (openssl s_client)",
    "e2fsprogs": "the tests' journalled ext4 on a loop device (mkfs.ext4)",
    "util-linux": "the tests' loop mounts and open-files limits (mount, prlimit)",
}
# needed only by Debian's own python3, whose C headers come apart (pyenv's and python.org's
# builds carry theirs)
PYTHON_HEADERS = ("python3-dev", "pyfuse3's build includes Python.h")
GO_MIN = (1, 24)
RUST_MIN = (1, 79)  # rustls 0.23 (native/tls), built by `pip install` into fluidfed._rustls
PYTHON_MIN = (3, 11)
FUSE_DEVICE = Path("/dev/fuse")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing checked: `fix` says what to run when it is not `ok`; a finding that does
    not block is a note (something that will be done, or a part that will be skipped)."""

    what: str
    ok: bool
    fix: str = ""
    blocks: bool = True
    detail: str = ""  # one more line under `what` (what each missing thing is for)


def headers_missing() -> bool:
    """Whether this Python lacks the C headers that building pyfuse3 needs."""
    return not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()


def debian_python() -> bool:
    return Path(sys.base_prefix) == Path("/usr")


def wanted_packages() -> list[str]:
    wanted = list(PACKAGES)
    if headers_missing() and debian_python():
        wanted.append(PYTHON_HEADERS[0])
    return wanted


def missing_packages() -> list[str]:
    wanted = wanted_packages()
    if shutil.which("dpkg-query") is None:
        return wanted
    out = []
    for pkg in wanted:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if r.returncode != 0 or not r.stdout.endswith(" installed"):
            out.append(pkg)
    return out


def packages(is_root: bool) -> Finding:
    missing = missing_packages()
    if not missing:
        return Finding(f"Debian packages: all {len(wanted_packages())} there", True)
    if shutil.which("apt-get") is None:
        return Finding(
            f"not a Debian system (no apt-get): the demo and the tests need {' '.join(missing)}",
            False,
            "install their equivalents with this system's package manager",
        )
    what = f"Debian packages missing: {' '.join(missing)}"
    reasons = {**PACKAGES, PYTHON_HEADERS[0]: PYTHON_HEADERS[1]}
    why = "; ".join(f"{p}: {reasons[p]}" for p in missing)
    if is_root:
        return Finding(
            what,
            False,
            "scripts/setup installs them (apt-get install) once nothing else is missing",
            blocks=False,
            detail=why,
        )
    return Finding(
        what,
        False,
        f"sudo apt-get install -y {' '.join(missing)}   (or run scripts/setup as root)",
        detail=why,
    )


def _version(tool: str, arg: str, pattern: str) -> tuple[int, int] | None:
    """`tool`'s major and minor version as `tool arg` prints it, or None if not on PATH."""
    path = shutil.which(tool)
    if path is None:
        return None
    r = subprocess.run([path, arg], capture_output=True, text=True, check=False)
    m = re.search(pattern, r.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def go_version() -> tuple[int, int] | None:
    return _version("go", "version", r"go(\d+)\.(\d+)")


def go() -> Finding:
    """Go builds the local-cluster binaries once; with them in the cache it is not needed."""
    missing = binaries.missing()
    if not missing:
        return Finding(f"local-cluster binaries: built, in {binaries.cache_dir()}", True)
    need = f"Go >= {GO_MIN[0]}.{GO_MIN[1]}"
    what = (
        f"{need} builds the local-cluster binaries once ({len(missing)} missing from "
        f"{binaries.cache_dir()}: {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
    )
    fix = (
        "install Go from https://go.dev/dl/ (Debian's golang-go is too old before trixie): "
        "tar -C /usr/local -xzf go1.*.linux-amd64.tar.gz && export PATH=$PATH:/usr/local/go/bin"
        "; or set FLUIDFED_TESTBIN to a directory that has the binaries"
    )
    return _toolchain(
        "go", go_version(), GO_MIN, what, fix, "Go {}: builds the missing binaries once"
    )


def _toolchain(
    tool: str, version: tuple[int, int] | None, least: tuple[int, int], what: str, fix: str,
    ready: str,
) -> Finding:  # fmt: skip
    """`what` missing (with `fix`) unless `tool` is there at `least`; else `ready` with its
    version."""
    if version is None:
        return Finding(f"{what}: no `{tool}` on PATH", False, fix)
    if version < least:
        return Finding(f"{what}: `{tool}` is {version[0]}.{version[1]}", False, fix)
    return Finding(ready.format(f"{version[0]}.{version[1]}"), True)


def rust_version() -> tuple[int, int] | None:
    return _version("cargo", "--version", r"cargo (\d+)\.(\d+)")


def rust() -> Finding:
    """Rust's cargo builds the servers' TLS engine (native/tls) when fluidfed is installed."""
    need = f"Rust >= {RUST_MIN[0]}.{RUST_MIN[1]} (cargo)"
    what = f"{need} builds fluidfed's TLS engine (native/tls, rustls) at `pip install`"
    fix = (
        "install Rust with rustup (https://rustup.rs: curl ... | sh -s -- -y, then "
        "source ~/.cargo/env), or Debian's cargo where it is new enough"
    )
    return _toolchain(
        "cargo", rust_version(), RUST_MIN, what, fix, "Rust {}: builds fluidfed's TLS engine"
    )


def fuse_device(is_root: bool) -> Finding:
    try:
        mode = FUSE_DEVICE.stat().st_mode
    except OSError:
        mode = 0
    if not stat.S_ISCHR(mode):
        return Finding(
            f"{FUSE_DEVICE} is missing: the FUSE sidecar mounts through it",
            False,
            "on a VM: modprobe fuse (as root); in a container: start it with "
            "--device /dev/fuse --cap-add SYS_ADMIN",
        )
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        return Finding(
            f"{FUSE_DEVICE} is not open to you (mode {stat.filemode(mode)})",
            False,
            "run as root, or let users mount: chmod 666 /dev/fuse (as root)",
        )
    if not is_root and shutil.which("fusermount3") is None:
        return Finding(
            "fusermount3 is missing: mounting FUSE without root goes through it",
            False,
            "sudo apt-get install -y fuse3, or run as root",
        )
    return Finding(f"{FUSE_DEVICE}: usable", True)


def room_for_tests(is_root: bool, free: int | None = None) -> Finding:
    """Room for the tests' own filesystem (`devkit.local.scratch`, made as root), `free`
    bytes where it goes (read there if None)."""
    gib = int(os.environ.get("FLUIDFED_TEST_DISK_GIB") or scratch.GIB)
    where = scratch.parent_dir().parent
    if not is_root:
        return Finding("tests' files: in the temp dir (not root: no filesystem of their own)", True)
    if free is None:
        free = shutil.disk_usage(where).free
    if free >= gib * 2**30:
        return Finding(
            f"tests' own filesystem: {free / 2**30:.0f} GiB free in {where}, {gib} GiB taken", True
        )
    return Finding(
        f"tests' own filesystem: {gib} GiB wanted, {free / 2**30:.1f} GiB free in {where}: "
        "./scripts/test would stop at its start",
        False,
        "free space there, or set TMPDIR to a disk with room, or FLUIDFED_TEST_DISK_GIB "
        "lower (a whole run takes about 6)",
        blocks=False,
    )


def root(is_root: bool) -> Finding:
    if is_root:
        return Finding("root: yes (the real-node tests can run)", True)
    return Finding(
        "not root: the real-node tests are skipped and Debian packages cannot be installed",
        False,
        "run the tests as root (sudo -E ./scripts/test) to include them",
        blocks=False,
    )


def python_env() -> Finding:
    version = sys.version_info[:2]
    if version < PYTHON_MIN:
        return Finding(
            f"Python {version[0]}.{version[1]}: fluidfed needs >= 3.11",
            False,
            "use a newer python3 (Debian 12 has 3.11) and run again",
        )
    managed = Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
    if sys.prefix == sys.base_prefix and managed.exists():
        return Finding(
            f"Python {version[0]}.{version[1]} is the system's, managed by apt (pip refuses it)",
            False,
            "make a venv and run again from it: python3 -m venv ~/.venvs/fluidfed && "
            ". ~/.venvs/fluidfed/bin/activate  (Debian package python3-venv)",
        )
    if headers_missing() and not debian_python():
        include = sysconfig.get_paths()["include"]
        return Finding(
            f"Python {version[0]}.{version[1]} of {sys.base_prefix} has no C headers "
            f"({include}/Python.h): pyfuse3's build needs them",
            False,
            "install this Python's development files (or use Debian's python3 with python3-dev)",
        )
    where = "a venv" if sys.prefix != sys.base_prefix else sys.prefix
    return Finding(f"Python {version[0]}.{version[1]} in {where}", True)


def fuse_binding() -> Finding:
    """pyfuse3 (the `fuse` extra) imports, with the libfuse3 it was built against. Asked of
    a fresh interpreter: the dev kit itself never imports it."""
    r = subprocess.run(
        [sys.executable, "-c", "import pyfuse3"], capture_output=True, text=True, check=False
    )
    if r.returncode == 0:
        return Finding("pyfuse3: imports", True)
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return Finding(
        f"pyfuse3 does not import ({last}): the FUSE sidecar needs it",
        False,
        "pip install -e '.[fuse]' (it builds against libfuse3-dev, with pkg-config and gcc); "
        "scripts/setup does all of it",
    )


def for_setup() -> list[Finding]:
    is_root = os.geteuid() == 0
    return [
        python_env(),
        packages(is_root),
        go(),
        rust(),
        fuse_device(is_root),
        root(is_root),
        room_for_tests(is_root),
    ]


def for_demo() -> list[Finding]:
    is_root = os.geteuid() == 0
    return [fuse_device(is_root), fuse_binding(), go()]


def report(findings: list[Finding]) -> list[str]:
    """Lines for the user: every finding, then what to run for each one not ok."""
    lines = []
    for f in findings:
        mark = "ok  " if f.ok else ("note" if not f.blocks else "MISSING")
        lines.append(f"  {mark:7} {f.what}")
        if f.detail:
            lines.append(f"          ({f.detail})")
        if not f.ok:
            lines.append(f"          -> {f.fix}")
    return lines


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok and f.blocks]


def main(argv: list[str]) -> int:
    if argv == ["packages"]:
        for pkg in missing_packages():
            print(pkg)
        return 0
    if argv != ["setup"]:
        print("usage: python3 -m devkit.preflight setup|packages", file=sys.stderr)
        return 2
    findings = for_setup()
    print("\n".join(report(findings)))
    stop = blocking(findings)
    if stop:
        print(
            f"preflight: {len(stop)} thing(s) missing, nothing changed; do what the arrows say "
            "and run scripts/setup again",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
