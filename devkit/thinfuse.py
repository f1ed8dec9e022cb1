"""What Fluid does to start a ThinRuntime's FUSE container, for the tests and the demo: the
config.json it writes from the Dataset and the ThinRuntime (as Fluid's thin engine does in
`transformFuseConfig`, ConfigMap storage: each encryptOption becomes the path of its
Secret's key), the Secret files the kubelet would mount, and the profile's command with
the environment Fluid gives it (`MOUNT_POINT`).

Fluid mounts these at /etc/fluid/config/config.json and /etc/fluid/secrets/<secret>/<key>
in the container; here they live below a directory of the caller's.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def write_secret(secrets_root: Path, name: str, data: Mapping[str, str]) -> None:
    """A Secret as the kubelet mounts it: one file per key."""
    d = secrets_root / name
    d.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        (d / key).write_text(value)
        (d / key).chmod(0o600)


def write_config(doc: Mapping[str, Any], config_dir: Path) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "config.json"
    path.write_text(json.dumps(doc))  # one line, as Fluid writes it
    return path


def fuse_command(profile: Mapping[str, Any], config_path: Path) -> list[str]:
    """The profile's FUSE command with its config where this process has it, run by this
    interpreter (`fluidfed` is `python -m fluidfed.cli.main`)."""
    command = list(profile["spec"]["fuse"]["command"])
    if command[:1] == ["fluidfed"]:
        command = [sys.executable, "-m", "fluidfed.cli.main", *command[1:]]
    return [str(config_path) if c == FLUID_CONFIG else c for c in command]


def fuse_env(target: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's environment: none of this process's credentials, Fluid's
    MOUNT_POINT."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(("AWS_", "OSS_"))
    }
    return {**env, "MOUNT_POINT": str(target)}
