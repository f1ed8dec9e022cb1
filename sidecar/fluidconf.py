"""fluidfed's sidecar as the FUSE container of a Fluid ThinRuntimeProfile: the sidecar's
settings from the config.json Fluid writes for it (`/etc/fluid/config/config.json`). Pure:
the caller reads the files.

Fluid writes the Dataset's mounts with their options, and each encryptOption as an option
whose value is the path of the Secret's key mounted in the container
(`/etc/fluid/secrets/<secret>/<key>`; with `THIN_FUSE_CONFIG_STORAGE=secret` the value
itself); the ThinRuntime's fuse options as `runtimeOptions` (what the agent puts there:
the dataset's name, block size, memory cache, the cache workers); and `targetPath`, where
the FUSE mount must appear (also in `MOUNT_POINT`).
"""

from __future__ import annotations

import posixpath

import msgspec

from fluidfed import engines
from fluidfed.data.layout import Peers, SidecarConfig
from fluidfed.errors import ConfigError
from fluidfed.models import CacheTier, Mount
from fluidfed.units import ByteSize

# the Secret's keys as fluidfed's engine names them in the Dataset, and the variables the
# under-storage readers take credentials from
CREDENTIAL_ENV = {
    engines.ACCESS_KEY: "AWS_ACCESS_KEY_ID",
    engines.SECRET_KEY: "AWS_SECRET_ACCESS_KEY",
}


class FluidMount(msgspec.Struct, rename="camel", frozen=True):
    mount_point: str
    name: str = ""
    path: str = ""
    options: dict[str, str] = {}


class FluidConfig(msgspec.Struct, rename="camel", frozen=True):
    mounts: list[FluidMount] = []
    target_path: str = ""
    runtime_options: dict[str, str] = {}
    access_modes: list[str] = []


def parse(raw: bytes, file: str) -> FluidConfig:
    try:
        return msgspec.json.decode(raw, type=FluidConfig)
    except msgspec.ValidationError as err:
        raise ConfigError.one(
            f"not the config.json of a Fluid ThinRuntime: {err}", file=file
        ) from None
    except msgspec.DecodeError as err:
        raise ConfigError.one(f"not JSON: {err}", file=file) from None


def _int(options: dict[str, str], key: str, file: str) -> int | None:
    if key not in options:
        return None
    try:
        return int(options[key])
    except ValueError:
        raise ConfigError.one(
            f"{key} must be a whole number, got {options[key]!r}: the ThinRuntime's "
            f"spec.fuse.options.{key}",
            file=file,
            path=f"runtimeOptions.{key}",
        ) from None


def sidecar_config(fc: FluidConfig, file: str) -> tuple[SidecarConfig, dict[str, str]]:
    """The sidecar's settings, and {variable: the option's value} of the credentials
    (a file path to read, or the value itself)."""
    if not fc.mounts:
        raise ConfigError.one(
            "the Dataset has no mounts: give it one (dataset.spec.mounts)", file=file, path="mounts"
        )
    opts = fc.runtime_options
    # Fluid's target path is <mount root>/<namespace>/<name>/thin-fuse
    parts = fc.target_path.rstrip("/").split("/")
    dataset = opts.get("dataset") or (parts[-2] if len(parts) >= 3 else "")
    if not dataset:
        raise ConfigError.one(
            "no dataset name: the ThinRuntime's spec.fuse.options.dataset names it",
            file=file,
            path="runtimeOptions.dataset",
        )
    creds: dict[str, str] = {}
    mounts = []
    for m in fc.mounts:
        options = dict(m.options)
        for key, var in CREDENTIAL_ENV.items():
            if key in options:
                creds[var] = options.pop(key)
        mounts.append(Mount(uri=m.mount_point, name=m.name, path=m.path, options=options))
    fields: dict[str, object] = {"dataset": dataset, "mounts": mounts}
    block = _int(opts, "block_size", file)
    if block is not None:
        fields["block_size"] = block
    quota = _int(opts, "cache_quota", file)
    if quota is not None:
        fields["cache"] = [CacheTier(medium="MEM", quota=ByteSize(quota))]
    replicas = _int(opts, "workers_replicas", file)
    if opts.get("workers_statefulset") and replicas:
        fields["workers"] = Peers(
            statefulset=opts["workers_statefulset"],
            service=opts.get("workers_service", ""),
            port=_int(opts, "workers_port", file) or Peers().port,
            replicas=replicas,
            scheme=opts.get("workers_scheme", Peers().scheme),
        )
    for name in ("credentials_file", "ca_file"):
        if opts.get(name):
            fields[name] = opts[name]
    fields["short_circuit"] = False  # Fluid's FUSE pod sees no worker's block files
    return SidecarConfig(**fields), creds  # type: ignore[arg-type]


SECRETS_ROOT = "/etc/fluid/secrets/"  # where Fluid mounts the encryptOptions' Secrets


def is_secret_file(value: str) -> bool:
    """A credential option holds the path of the Secret's key (Fluid's default), below
    Fluid's secrets root; anything else is the value itself (a secret key may well begin
    with "/")."""
    return posixpath.normpath(value).startswith(SECRETS_ROOT)
