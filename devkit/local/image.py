"""Container images without Docker or a registry: a root filesystem packed with umoci into
an OCI layout, tarred, and imported into a real node's containerd (`ctr images import`);
pods use them with `imagePullPolicy: Never`.

* the sandbox image: the static `pause` testbin builds, alone in one layer;
* the fluidfed image: a Debian minbase root filesystem (mmdebstrap) with a venv made of the
  project's own wheels, cached by the hash of what goes in (`fluidfed local image build`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devkit.local import paths
from fluidfed.errors import LocalClusterError

Progress = Callable[[str], None]
PAUSE_REF = "localhost/pause:3.10"


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
