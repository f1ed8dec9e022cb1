"""What Fluid and the kubelet do to start a ThinRuntime's FUSE container, for the tests:
the config.json Fluid writes from the Dataset and the ThinRuntime (as Fluid's thin engine
does in `transformFuseConfig`, ConfigMap storage: each encryptOption becomes the path of
its Secret's key), and the container as a process that sees what the container would.

`Container` runs a command in a mount namespace of its own whose /etc is an overlay
holding the container's files (/etc/fluid/config/config.json, the Secrets at
/etc/fluid/secrets/<secret>/<key>, the profile's Secret volumes, /etc/hosts entries as the
cluster's DNS would answer), so the paths are the container's, and this machine's /etc is
untouched. A FUSE mount it makes below a `propagating` directory appears here too, as
Fluid's FUSE pods mount with Bidirectional propagation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

FLUID_CONFIG = "/etc/fluid/config/config.json"


def target_path(namespace: str, name: str, mount_root: Path) -> Path:
    """Where Fluid has a ThinRuntime's FUSE mount: <root>/thin/<namespace>/<name>/thin-fuse."""
    return mount_root / "thin" / namespace / name / "thin-fuse"


def fuse_config(
    dataset: Mapping[str, Any], runtime: Mapping[str, Any], target: Path, secrets_root: Path
) -> dict[str, Any]:
    """config.json as Fluid writes it for the Dataset and its ThinRuntime."""
    spec = dataset["spec"]
    shared = dict(spec.get("sharedOptions") or {})
    mounts = []
    for m in spec.get("mounts", []):
        options = {**shared, **(m.get("options") or {})}
        for opt in [*(spec.get("sharedEncryptOptions") or []), *(m.get("encryptOptions") or [])]:
            ref = opt["valueFrom"]["secretKeyRef"]
            options[opt["name"]] = str(secrets_root / ref["name"] / ref["key"])
        mount = {k: v for k, v in m.items() if k != "encryptOptions"}
        mounts.append({**mount, "options": options})
    doc: dict[str, Any] = {"mounts": mounts, "targetPath": str(target)}
    runtime_options = (runtime.get("spec", {}).get("fuse") or {}).get("options")
    if runtime_options:
        doc["runtimeOptions"] = runtime_options
    doc["accessModes"] = spec.get("accessModes") or ["ReadOnlyMany"]
    return doc


SECRETS_ROOT = Path("/etc/fluid/secrets")


def secret_files(obj: Mapping[str, Any], mount_path: str) -> dict[str, bytes]:
    """A Secret or ConfigMap volume as the kubelet lays it out: a file per key."""
    data = obj.get("data") or {}
    if obj.get("kind") == "Secret":
        return {posixpath.join(mount_path, k): base64.b64decode(v) for k, v in data.items()}
    return {posixpath.join(mount_path, k): str(v).encode() for k, v in data.items()}


def expand(args: list[str], env: Mapping[str, str]) -> list[str]:
    """`$(NAME)` in a container's arguments, as the kubelet expands it."""
    out = []
    for a in args:
        for k, v in env.items():
            a = a.replace(f"$({k})", v)
        out.append(a)
    return out


def volume_files(
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    sources: Mapping[str, Mapping[str, Any]],
) -> dict[str, bytes]:
    """The files of a container's Secret and ConfigMap volumes; `sources` by name."""
    by_name = {v["name"]: v for v in volumes}
    out: dict[str, bytes] = {}
    for m in mounts:
        v = by_name[m["name"]]
        ref = (v.get("secret") or {}).get("secretName") or (v.get("configMap") or {}).get("name")
        if ref:
            out.update(secret_files(sources[ref], m["mountPath"]))
    return out


def fluid_fuse_files(
    dataset: Mapping[str, Any],
    runtime: Mapping[str, Any],
    profile: Mapping[str, Any],
    target: Path,
    sources: Mapping[str, Mapping[str, Any]],
) -> dict[str, bytes]:
    """Every file Fluid and the kubelet give the profile's FUSE container: config.json,
    the encryptOptions' Secrets, and the profile's own Secret volumes."""
    doc = fuse_config(dataset, runtime, target, SECRETS_ROOT)
    files = {FLUID_CONFIG: json.dumps(doc).encode()}  # one line, as Fluid writes it
    for m in dataset["spec"].get("mounts", []):
        for opt in m.get("encryptOptions") or []:
            ref = opt["valueFrom"]["secretKeyRef"]
            files.update(secret_files(sources[ref["name"]], str(SECRETS_ROOT / ref["name"])))
    fuse = profile["spec"]["fuse"]
    files.update(
        volume_files(profile["spec"].get("volumes", []), fuse.get("volumeMounts", []), sources)
    )
    return files


def command(argv: list[str]) -> list[str]:
    """A container's command, run by this interpreter (`fluidfed` is the image's
    entrypoint: `python -m fluidfed.cli.main`)."""
    if argv[:1] == ["fluidfed"]:
        return [sys.executable, "-m", "fluidfed.cli.main", *argv[1:]]
    return list(argv)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A container's environment: none of this process's credentials, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OSS_"))}
    return {**env, **(extra or {})}


# run inside the new mount namespace; Python rather than a shell, which would drop the
# variables whose names are no shell identifiers (a Secret's `access-key` by envFrom)
_ENTER = """import os, subprocess, sys
s = sys.argv[1]
subprocess.run(["mount", "-t", "overlay", "fluidfed-etc", "-o",
                f"lowerdir=/etc,upperdir={s}/upper,workdir={s}/work", "/etc"], check=True)
subprocess.run(["cp", "-a", f"{s}/files/etc/.", "/etc/"], check=True)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class Container:
    """`argv` as a container's process: its own mount namespace, /etc an overlay with
    `files` (container paths below /etc) and `hosts` (name -> address) in /etc/hosts."""

    def __init__(
        self,
        scratch: Path,
        argv: list[str],
        *,
        files: Mapping[str, bytes],
        env: Mapping[str, str],
        hosts: Mapping[str, str] | None = None,
        log: IO[bytes] | None = None,
    ) -> None:
        for d in ("upper", "work", "files/etc"):
            (scratch / d).mkdir(parents=True, exist_ok=True)
        every = dict(files)
        if hosts:
            lines = "".join(f"{ip} {name}\n" for name, ip in hosts.items())
            every["/etc/hosts"] = Path("/etc/hosts").read_bytes() + lines.encode()
        for path, content in every.items():
            if not path.startswith("/etc/"):
                raise ValueError(f"{path}: only files below /etc are laid out")
            f = scratch / "files" / path.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
            f.chmod(0o600)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "unchanged", sys.executable, "-c", _ENTER,
             str(scratch), *argv],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )  # fmt: skip


@contextlib.contextmanager
def propagating(path: Path) -> Iterator[Path]:
    """`path` as a shared mount, so mounts made below it in a container's namespace show
    here (the kubelet's Bidirectional propagation); lazily unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(path)], check=True)
        yield path
    finally:
        with open("/proc/self/mounts") as f:
            below = [line.split()[1] for line in f if line.split()[1].startswith(str(path) + "/")]
        for m in sorted(below, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)
        subprocess.run(["umount", "-l", str(path)], check=False)
