"""Container images without Docker or a registry: a root filesystem packed with umoci into
an OCI layout, tarred, and imported into a real node's containerd (`ctr images import`);
pods use them with `imagePullPolicy: Never`.

* the sandbox image: the static `pause` testbin builds, alone in one layer;
* the fluidfed image: a Debian minbase root filesystem (mmdebstrap) with a venv made of the
  project's own wheels, cached by the hash of what goes in (`fluidfed local image build`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

import fluidfed
from devkit.local import paths
from fluidfed.errors import LocalClusterError

Progress = Callable[[str], None]
PAUSE_REF = "localhost/pause:3.10"
FLUIDFED_NAME = "localhost/fluidfed"
FLUIDFED_REF = f"{FLUIDFED_NAME}:{fluidfed.__version__}"

# what the image is made of; any change here, in the sources or in the Debian suite makes a
# new image (the cache key is the hash of all of it)
RECIPE = 2
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
PACKAGES = ("python3", "python3-venv", "fuse3", "libfuse3-3", "ca-certificates")
VENV = "/opt/fluidfed"
# as configs/deploy/Dockerfile: the components, not the dev kit, run as 65532
SOURCES = ("pyproject.toml", "README.md", "fluidfed", "hub", "agents", "sidecar", "native")
USER = "65532:65532"
ENTRYPOINT = ("fluidfed",)
ENV = (f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
# the wheels are built by the interpreter the image gets (Debian's), pyfuse3 against
# libfuse3-dev: the image has no compiler
HOST_PYTHON = "/usr/bin/python3"


class BuiltImage(msgspec.Struct, frozen=True, kw_only=True):
    ref: str
    archive: str
    key: str
    seconds: float  # 0 when it came from the cache
    bytes: int


def cache_dir() -> Path:
    return paths.cache_dir("images", "FLUIDFED_IMAGES")


def run(
    argv: Sequence[str], what: str, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    """Run a build step; a failure is an error with the step's last output lines."""
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise LocalClusterError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LocalClusterError(
            f"building images needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )


def pack(
    layer: Path,
    out: Path,
    *,
    tag: str,
    entrypoint: Sequence[str],
    user: str = "",
    env: Sequence[str] = (),
    workdir: str = "",
) -> Path:
    """An OCI archive at `out` (written atomically) with one layer (an uncompressed tar of a
    root filesystem) and the given config, tagged `tag` for `ctr images import --base-name`."""
    need("umoci")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layout = Path(tmp) / "layout"
        image = f"{layout}:{tag}"
        run(["umoci", "init", "--layout", str(layout)], "umoci init")
        run(["umoci", "new", "--image", image], "umoci new")
        run(["umoci", "raw", "add-layer", "--image", image, str(layer)], "umoci raw add-layer")
        config = ["umoci", "config", "--image", image, "--clear=config.entrypoint"]
        config += [f"--config.entrypoint={part}" for part in entrypoint]
        config += [f"--config.env={e}" for e in env]
        if user:
            config.append(f"--config.user={user}")
        if workdir:
            config.append(f"--config.workingdir={workdir}")
        run(config, "umoci config")
        run(["umoci", "gc", "--layout", str(layout)], "umoci gc")
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        os.replace(partial, out)
    return out


def pause_image(bins: Path) -> Path:
    """The sandbox image (`localhost/pause:3.10`): testbin's static pause, nothing else."""
    out = cache_dir() / f"pause-{_file_hash(bins / 'pause')[:16]}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            info = tar.gettarinfo(bins / "pause", arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(bins / "pause", "rb") as f:
                tar.addfile(info, f)
        pack(layer, out, tag=PAUSE_REF.rsplit(":", 1)[1], entrypoint=["/pause"], user="65535")
    return out


def import_image(ctr: Path, address: str, archive: Path, base_name: str) -> float:
    """Import an OCI archive into the node's containerd (CRI namespace); seconds taken."""
    t0 = time.monotonic()
    run(
        [str(ctr), "--address", address, "-n", "k8s.io", "images", "import",
         "--base-name", base_name, str(archive)],
        f"importing {archive.name} into containerd",
    )  # fmt: skip
    return time.monotonic() - t0


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the fluidfed image ------------------------------------------------------------------


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def source_files(root: Path) -> list[Path]:
    """The files that go into the wheel: tracked or new, not ignored, under SOURCES."""
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard", "--", *SOURCES],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode == 0:
        files = [root / f for f in proc.stdout.splitlines()]
    else:  # not a git checkout: every file under SOURCES but caches
        files = [f for s in SOURCES for f in ([root / s] if (root / s).is_file() else
                 (root / s).rglob("*"))]  # fmt: skip
    return sorted(f for f in files if f.is_file() and "__pycache__" not in f.parts)


def image_key(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    recipe = (RECIPE, SUITE, MIRRORS, PACKAGES, VENV, USER, ENTRYPOINT, ENV)
    h.update(repr(recipe).encode())
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(_file_hash(f).encode())
    return h.hexdigest()[:20]


def without_devkit(pyproject: str) -> str:
    """pyproject.toml for the image: the dev kit neither packaged nor plugged into the CLI
    (an entry point to a missing module would break every `fluidfed` command)."""
    text = re.sub(r'(?m)^devkit = "devkit\.commands:register"\n', "", pyproject)
    text = re.sub(r"(?m)^devkit = \[.*\]\n", "", text)
    return text.replace(', "devkit*"', "")


KEEP_UNUSED = 6 * 3600.0  # seconds an image of other sources stays in the cache unused


def build_fluidfed(progress: Progress, *, force: bool = False) -> BuiltImage:
    """The fluidfed image as an OCI archive in the image cache: from the cache when nothing
    that goes in changed, else wheels + mmdebstrap + umoci (about a minute)."""
    root = project_root()
    if not (root / "pyproject.toml").is_file():
        raise LocalClusterError(
            f"the image is built from a source checkout of fluidfed; {root} is not one "
            "(install with `pip install -e .` from a clone)"
        )
    files = source_files(root)
    key = image_key(root, files)
    out = cache_dir() / f"fluidfed-{fluidfed.__version__}-{key}.tar"
    if out.exists() and not force:
        out.touch()  # in use: other checkouts' builds leave it (see KEEP_UNUSED)
        return BuiltImage(ref=FLUIDFED_REF, archive=str(out), key=key, seconds=0.0,
                          bytes=out.stat().st_size)  # fmt: skip
    need("mmdebstrap", "umoci")
    if os.geteuid() != 0:
        raise LocalClusterError("building the image needs root (mmdebstrap --mode=root)")
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="build-") as tmp:
        work = Path(tmp)
        src = work / "src"
        for f in files:
            dest = src / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        (src / "pyproject.toml").write_text(without_devkit((src / "pyproject.toml").read_text()))
        progress(f"image: wheels of fluidfed, its fuse extra and dependencies ({HOST_PYTHON})")
        # the TLS engine (native/tls) is built by cargo: its build kept in the cache, where
        # `pip install` of a checkout (scripts/setup) keeps it too, so only changes rebuild
        env = {
            **os.environ,
            "CARGO_TARGET_DIR": str(paths.cache_dir("cargo-target", "CARGO_TARGET_DIR")),
        }
        run([HOST_PYTHON, "-m", "pip", "wheel", "-q", "--wheel-dir", str(work / "wheels"),
             f"{src}[fuse]"], "pip wheel", env=env)  # fmt: skip
        progress(f"image: Debian {SUITE} minbase root filesystem with the venv (mmdebstrap)")
        rootfs = work / "rootfs.tar"
        run(mmdebstrap_argv(work / "wheels", rootfs), "mmdebstrap")
        progress("image: packing with umoci")
        pack(rootfs, out, tag=fluidfed.__version__, entrypoint=ENTRYPOINT, user=USER, env=ENV)
    for old in out.parent.glob("fluidfed-*.tar"):
        # images of other sources go once unused for a while: another checkout (a CI
        # clone, a worktree) may be about to import the one it built
        with contextlib.suppress(OSError):
            if old != out and time.time() - old.stat().st_mtime > KEEP_UNUSED:
                old.unlink()
    seconds = round(time.monotonic() - t0, 1)
    return BuiltImage(ref=FLUIDFED_REF, archive=str(out), key=key, seconds=seconds,
                      bytes=out.stat().st_size)  # fmt: skip


def mmdebstrap_argv(wheels: Path, target: Path) -> list[str]:
    # inside the chroot nothing of the host's environment (PIP_* settings, ...)
    chroot = 'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
    return [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--quiet",
        f"--include={','.join(PACKAGES)}",
        # without the merged-usr hook usrmerge pulls in perl (+47 MB)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        '--customize-hook=mkdir -p "$1/tmp/wheels"',
        f"--customize-hook=sync-in {wheels} /tmp/wheels",
        f"--customize-hook={chroot} python3 -m venv {VENV}",
        f"--customize-hook={chroot} {VENV}/bin/pip install -q --no-index"
        f" --find-links /tmp/wheels 'fluidfed[fuse]'",
        f"--customize-hook={chroot} {VENV}/bin/pip uninstall -q -y pip setuptools",
        # a named 65532 (as distroless's nonroot): the kubelet runs a numeric image user
        # with the group of its passwd entry, root's when there is none
        f"--customize-hook={chroot} groupadd -g 65532 nonroot",
        f"--customize-hook={chroot} useradd -u 65532 -g 65532 -M -d /nonexistent"
        " -s /usr/sbin/nologin nonroot",
        '--customize-hook=rm -rf "$1"/tmp/wheels "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        SUITE, str(target), *MIRRORS,
    ]  # fmt: skip
