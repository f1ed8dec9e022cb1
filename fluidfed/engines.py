"""Fluid's engines as each one reads a Dataset: which mount schemes it serves, what it
needs of a mount, and the Dataset mount written the way its runtime reads it. Pure.

Fluid's schemas accept any option on any mount; the engines do not. Each reads its own
option names (Alluxio `alluxio.underfs.s3.endpoint`, Jindo `fs.s3.endpoint`), its own
credential names (`aws.accessKeyId`, `fs.oss.accessKeySecret`, `metaurl`), and serves only
some schemes. A fluidfed mount says `endpoint`, `region` and a Secret with `access-key`
and `secret-key` once; `fluid_mount` turns it into what the chosen engine reads, and
`check` refuses, with the field path, what the engine could not serve. The hub checks at
apply, so a spec it accepts does not fail in the cluster.

    fluidfed   ThinRuntime + a ThinRuntimeProfile whose FUSE container is fluidfed's
               sidecar (reads Fluid's config.json): the default
    thin       ThinRuntime with a ThinRuntimeProfile of the cluster's (`cache.profile`)
    alluxio    AlluxioRuntime: s3://, oss://, http(s)://, file:// (as local://)
    jindo      JindoRuntime: s3://, oss:// (endpoint required), file:// (as local://)
    juicefs    JuiceFSRuntime: juicefs:///<subdir>, one mount; the metadata URL by Secret
    efc        EFCRuntime: nfs://<id>.<region>.nas.aliyuncs.com:/<dir>, one mount
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fluidfed.errors import Problem
from fluidfed.models import Dataset, Engine, Mount

# what the sidecar and the cache workers read themselves (fluidfed.data.ufs)
SIDECAR_SCHEMES = ("s3", "oss", "http", "https", "file")
REFERENCE_SCHEME = "dataset"  # Fluid's reference datasets: any engine's cluster serves them
# options only fluidfed's own reader understands: no other engine is given them
FLUIDFED_OPTIONS = ("timeout", "connect_timeout")
# the keys of the Secret a mount names, as fluidfed documents them
ACCESS_KEY, SECRET_KEY, METAURL = "access-key", "secret-key", "metaurl"
# Fluid's EFCRuntime matches the URI as written (efc/utils.go getMountInfo): lower case,
# and a ':' after the server
_NAS_URI = re.compile(r"nfs://[a-z0-9-]+\.[a-z0-9-]+\.nas\.aliyuncs\.com:/.*")
# `juicefs format <metaurl> <name>`, which Fluid's JuiceFSRuntime runs in its FUSE pods with
# the mount's name, refuses any other name (JuiceFS's cmd/format.go) and, on a volume
# formatted before, renames the volume to it
_JUICEFS_VOLUME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
# ThinRuntime mounts each Secret of encryptOptions as the volume thin-fuseconfig-<secret>
# (thin/transform_config.go), a DNS label of at most 63 characters
_THIN_SECRET_VOLUME = "thin-fuseconfig-"


@dataclass(frozen=True, slots=True)
class EngineRule:
    kind: str  # Fluid's runtime kind
    schemes: tuple[str, ...]
    one_mount: bool = False  # the engine mounts only the Dataset's first mount
    profile: bool = False  # a ThinRuntime with a ThinRuntimeProfile
    one_tier: bool = False  # Fluid gives the engine the first tieredstore level only
    # Fluid hands the engine that level's `low` as the share of the disk kept free
    # (JuiceFS's free-space-ratio): a tier's `min_free`, not its low watermark
    low_is_floor: bool = False


RULES: dict[Engine, EngineRule] = {
    "fluidfed": EngineRule("ThinRuntime", SIDECAR_SCHEMES, profile=True),
    "thin": EngineRule("ThinRuntime", ("s3", "oss", "http", "https", "file", "nfs"), profile=True),
    "alluxio": EngineRule("AlluxioRuntime", ("s3", "oss", "http", "https", "file")),
    "jindo": EngineRule("JindoRuntime", ("s3", "oss", "file"), one_tier=True),
    "juicefs": EngineRule(
        "JuiceFSRuntime", ("juicefs",), one_mount=True, one_tier=True, low_is_floor=True
    ),
    "efc": EngineRule("EFCRuntime", ("nfs",), one_mount=True),
}

# The longest dataset name each engine's runtime takes on a cluster with Fluid, and why:
# Fluid names the runtime's Helm release after the dataset (Helm takes 53), and the
# engines' charts name their objects after it, a StatefulSet among them (its pods'
# controller-revision-hash label, <statefulset>-<hash of 10>, takes 63: kubernetes#64023)
_HELM = "Fluid names its runtime's Helm release after the dataset, and Helm takes 53"
NAME_MAX: dict[Engine, tuple[int, str]] = {
    "fluidfed": (53, _HELM),
    "thin": (53, _HELM),
    "alluxio": (45, "AlluxioRuntime's StatefulSets are <dataset>-master and -worker"),
    "jindo": (37, "JindoRuntime's StatefulSet is <dataset>-jindofs-master"),
    "juicefs": (45, "JuiceFSRuntime's StatefulSet is <dataset>-worker"),
    "efc": (45, "EFCRuntime's StatefulSets are <dataset>-master and -worker"),
}
_STS = ", and a StatefulSet's name takes 52 (its pods' controller-revision-hash label)"

# (engine, scheme) -> {our option: the engine's}, and {our Secret key: the engine's name}
_OPTION_NAMES: dict[tuple[str, str], dict[str, str]] = {
    ("alluxio", "s3"): {
        "endpoint": "alluxio.underfs.s3.endpoint",
        "region": "alluxio.underfs.s3.region",
    },
    ("alluxio", "oss"): {"endpoint": "fs.oss.endpoint"},
    ("jindo", "s3"): {"endpoint": "fs.s3.endpoint", "region": "fs.s3.region"},
    ("jindo", "oss"): {"endpoint": "fs.oss.endpoint"},
}
_SECRET_NAMES: dict[tuple[str, str], dict[str, str]] = {
    ("alluxio", "s3"): {ACCESS_KEY: "aws.accessKeyId", SECRET_KEY: "aws.secretKey"},
    ("alluxio", "oss"): {ACCESS_KEY: "fs.oss.accessKeyId", SECRET_KEY: "fs.oss.accessKeySecret"},
    ("jindo", "s3"): {ACCESS_KEY: "fs.s3.accessKeyId", SECRET_KEY: "fs.s3.accessKeySecret"},
    ("jindo", "oss"): {ACCESS_KEY: "fs.oss.accessKeyId", SECRET_KEY: "fs.oss.accessKeySecret"},
    ("juicefs", "juicefs"): {METAURL: METAURL, ACCESS_KEY: ACCESS_KEY, SECRET_KEY: SECRET_KEY},
}
_NO_SECRET = {("efc", "nfs")}
# Alluxio addresses a bucket by path, as MinIO and most S3 servers besides AWS want
_ALLUXIO_S3_ENDPOINT = {
    "alluxio.underfs.s3.disable.dns.buckets": "true",
    "alluxio.underfs.s3.inherit.acl": "false",
}


def scheme(m: Mount) -> str:
    return urlsplit(m.uri).scheme


def is_reference(d: Dataset) -> bool:
    """A Fluid reference dataset: its one mount is another dataset (dataset://)."""
    return any(scheme(m) == REFERENCE_SCHEME for m in d.mounts)


def _mount_point(engine: str, m: Mount) -> str:
    parts = urlsplit(m.uri)
    if parts.scheme == "file" and engine in ("alluxio", "jindo"):
        return f"local://{parts.path}"  # their host-path mounts
    return m.uri


def _options(engine: str, m: Mount) -> dict[str, str]:
    sch = scheme(m)
    if engine == "fluidfed":
        return dict(m.options)
    renames = _OPTION_NAMES.get((engine, sch), {})
    out = {renames.get(k, k): v for k, v in m.options.items() if k not in FLUIDFED_OPTIONS}
    if engine == "alluxio" and sch == "s3" and "endpoint" in m.options:
        out = {**_ALLUXIO_S3_ENDPOINT, **out}
    return out


def secret_names(engine: str, m: Mount) -> dict[str, str]:
    """The Secret's key -> the name the engine reads it by (its encryptOptions)."""
    sch = scheme(m)
    if (engine, sch) in _NO_SECRET:
        return {}
    return _SECRET_NAMES.get((engine, sch), {ACCESS_KEY: ACCESS_KEY, SECRET_KEY: SECRET_KEY})


def fluid_name(m: Mount, index: int) -> str:
    """The name of mount `m` (number `index`) in a Fluid Dataset: Fluid needs one."""
    return m.name or f"m{index}"


def fluid_mount(engine: Engine, m: Mount, index: int) -> dict[str, Any]:
    """Mount `m` (number `index`) of a Fluid Dataset, as `engine` reads it."""
    mount: dict[str, Any] = {"mountPoint": _mount_point(engine, m), "name": fluid_name(m, index)}
    if m.path:
        mount["path"] = m.path
    options = _options(engine, m)
    if options:
        mount["options"] = options
    if m.secret:
        mount["encryptOptions"] = [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": m.secret, "key": key}}}
            for key, name in secret_names(engine, m).items()
        ]
    return mount


def check_name(d: Dataset, path: str = "dataset") -> list[Problem]:
    """A new dataset's name as long as its engine's runtime takes on a cluster with Fluid
    (`NAME_MAX`): a dataset may be placed on such a cluster."""
    most, why = NAME_MAX[d.cache.engine]
    if len(d.name) <= most:
        return []
    return [
        Problem(
            f"dataset name {d.name!r} is {len(d.name)} characters; engine "
            f"{d.cache.engine} takes {most} on a cluster with Fluid ({why}"
            f"{_STS if most < 53 else ''}), and a dataset may be placed on such a "
            "cluster: shorten it",
            path=f"{path}.name",
        )
    ]


def engines_serving(sch: str) -> list[str]:
    return [e for e, r in RULES.items() if sch in r.schemes]


def check_one_secret(d: Dataset, path: str = "dataset") -> list[Problem]:
    """fluidfed's own readers (the FUSE sidecar and the cache workers) read every mount of
    a dataset with one set of credentials (their environment, from the Secrets' keys): two
    Secrets would have one mount read with the other's keys and refused by its storage."""
    first: tuple[int, str] | None = None
    for i, m in enumerate(d.mounts):
        if not m.secret:
            continue
        if first is None:
            first = (i, m.secret)
        elif m.secret != first[1]:
            return [
                Problem(
                    f"fluidfed's sidecar and cache workers read all of a dataset's mounts with "
                    f"one Secret's keys, and mounts[{first[0]}] names {first[1]!r}: name the "
                    "same Secret (with keys that read both), or declare one dataset per Secret",
                    path=f"{path}.mounts[{i}].secret",
                )
            ]
    return []


def check(d: Dataset, path: str = "dataset", *, new: bool = True) -> list[Problem]:
    """What `d.cache.engine` cannot serve of `d`'s mounts, each with its field path.
    Reference datasets (dataset://) are Fluid's own and need no engine. `new`: with the
    rules added since specs were first taken (False: a sidecar's or a worker's copy of a
    binding, which reads the mounts itself and must still run)."""
    if is_reference(d):
        return _check_reference(d, path)
    engine = d.cache.engine
    rule = RULES[engine]
    problems: list[Problem] = []
    if rule.profile and engine == "thin" and not d.cache.profile:
        problems.append(
            Problem(
                "engine thin mounts through a ThinRuntimeProfile of the cluster's: name it in "
                "'profile', or use engine 'fluidfed' (the default), fluidfed's own profile",
                path=f"{path}.cache.profile",
            )
        )
    elif d.cache.profile and engine != "thin":
        problems.append(
            Problem(
                f"'profile' is for engine thin only; engine {engine} takes none",
                path=f"{path}.cache.profile",
            )
        )
    if rule.one_mount and len(d.mounts) > 1:
        problems.append(
            Problem(
                f"engine {engine} ({rule.kind}) mounts one storage per dataset: declare one "
                "dataset per mount",
                path=f"{path}.mounts[1]",
            )
        )
    if rule.one_tier and len(d.cache.tiers) > 1:
        problems.append(
            Problem(
                f"engine {engine} ({rule.kind}) caches in one tier: Fluid gives it the first "
                "tier only; declare one tier",
                path=f"{path}.cache.tiers[1]",
            )
        )
    named: dict[str, int] = {}
    for i, m in enumerate(d.mounts):
        p = f"{path}.mounts[{i}]"
        problems += _check_mount(engine, rule, m, p, new=new)
        name = fluid_name(m, i)
        j = named.setdefault(name, i)
        if new and j != i:
            given = m.name and d.mounts[j].name
            problems.append(
                Problem(
                    f"mounts[{j}] and mounts[{i}] are both named {name!r} in Fluid's Dataset"
                    f"{'' if given else ' (an unnamed mount number i is m<i> there)'}, and "
                    "Fluid's runtimes refuse or merge two mounts of one name: give each a "
                    "name of its own",
                    path=f"{p}.name",
                )
            )
    if engine == "fluidfed":
        problems += check_one_secret(d, path)
    return problems


def _check_reference(d: Dataset, path: str) -> list[Problem]:
    if len(d.mounts) == 1:
        return []
    return [
        Problem(
            "a dataset:// mount must be the dataset's only mount (Fluid's reference "
            "datasets hold exactly one): declare the other mounts in a dataset of their own",
            path=f"{path}.mounts",
        )
    ]


def _check_mount(engine: Engine, rule: EngineRule, m: Mount, p: str, *, new: bool) -> list[Problem]:
    parts = urlsplit(m.uri)
    sch = parts.scheme
    if not engines_serving(sch):
        return []  # not a scheme at all: the catalog's validation says so
    if sch not in rule.schemes:
        others = ", ".join(engines_serving(sch)) or "none"
        return [
            Problem(
                f"engine {engine} ({rule.kind}) cannot serve {sch}:// mounts; it serves "
                + ", ".join(f"{s}://" for s in rule.schemes)
                + f". Engines that serve {sch}://: {others} (set cache.engine)",
                path=f"{p}.uri",
            )
        ]
    problems: list[Problem] = []
    if new and sch == "juicefs" and not _JUICEFS_VOLUME.fullmatch(m.name):
        problems.append(
            Problem(
                "Fluid's JuiceFSRuntime runs `juicefs format` with the mount's name as the "
                "volume's name: set 'name' to the JuiceFS volume's name (3-63 lowercase "
                "letters, digits and '-'; JuiceFS refuses others, and renames a volume "
                "formatted before to the name given)" + (f", not {m.name!r}" if m.name else ""),
                path=f"{p}.name",
            )
        )
    if sch == "juicefs":
        for key, what in (("bucket", "the object storage's URL"), ("storage", "its type")):
            if not m.options.get(key):
                problems.append(
                    Problem(
                        f"JuiceFS needs option {key!r} ({what}, e.g. bucket = "
                        '"http://minio:9000/jfs", storage = "minio")',
                        path=f"{p}.options.{key}",
                    )
                )
        if not m.secret:
            problems.append(
                Problem(
                    "JuiceFS reads its metadata URL from a Secret: name one in 'secret' with "
                    f"the keys {METAURL}, {ACCESS_KEY} and {SECRET_KEY}",
                    path=f"{p}.secret",
                )
            )
    if new and m.secret and rule.profile and len(_THIN_SECRET_VOLUME + m.secret) > 63:
        problems.append(
            Problem(
                f"secret name {m.secret!r} is {len(m.secret)} characters: ThinRuntime "
                f"mounts it as the volume {_THIN_SECRET_VOLUME}<secret>, a name of at most 63, "
                f"so the Secret's may have at most {63 - len(_THIN_SECRET_VOLUME)}: name a "
                "Secret with a shorter name",
                path=f"{p}.secret",
            )
        )
    if engine == "efc" and not _NAS_URI.fullmatch(m.uri):
        server = parts.netloc.rpartition("@")[2]  # (as written; never a password)
        problems.append(
            Problem(
                "EFCRuntime mounts Alibaba Cloud NAS only, written in lower case: nfs://<id>."
                f"<region>.nas.aliyuncs.com:/<dir>, not {server or '(no server)'}; for another "
                "NFS server mount it on the nodes and use file://, or engine thin with an NFS "
                "profile",
                path=f"{p}.uri",
            )
        )
    if engine == "jindo" and sch == "oss" and not m.options.get("endpoint"):
        problems.append(
            Problem(
                "JindoRuntime needs the OSS endpoint: set option 'endpoint' "
                "(e.g. https://oss-cn-hangzhou-internal.aliyuncs.com)",
                path=f"{p}.options.endpoint",
            )
        )
    if (engine, sch) in _NO_SECRET and m.secret:
        problems.append(
            Problem(
                f"engine {engine} reads no credentials for {sch}:// mounts: remove 'secret'",
                path=f"{p}.secret",
            )
        )
    return problems
