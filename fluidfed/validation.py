"""Cross-field rules over decoded models. Pure: data in, every problem out, with field paths.

msgspec has already checked types and ranges; these are the rules a type cannot say.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
from collections.abc import Callable
from urllib.parse import SplitResult, parse_qsl, urlsplit

import msgspec

from fluidfed import engines, names
from fluidfed.errors import Problem
from fluidfed.models import (
    DISK_MIN_FREE,
    AgentConfig,
    AutoscalePolicy,
    CacheSpec,
    CacheTier,
    Cluster,
    Dataset,
    Document,
    HubConfig,
    LabelSelector,
    Mount,
    Placement,
)
from fluidfed.units import format_duration, format_size, parse_duration

MIN_BLOCK_SIZE = 64 * 1024  # a cache's block_size, at least ...
MAX_BLOCK_SIZE = 64 * 2**20  # ... and at most (readers size their buffers by it)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
URI_SCHEMES = ("s3", "oss", "http", "https", "file", "dataset", "nfs", "juicefs")
# option names that hold a credential: compounds anywhere (accessKey, fs.s3a.secret.key's
# "secret"), words between separators (a.password, db_pwd), and short names alone (sig);
# not any name that merely contains "auth" or "signature" (signature_version, oauth_scope,
# alluxio.security.authorization.permission.enabled are settings, not secrets)
_SECRET_OPTION = re.compile(
    r"(access|secret|api|private)[_-]?key|(session|security)[_-]?token"
    r"|(^|[._-])(secret|password|passwd|pwd|passphrase|token|credentials?)([._-]|$)"
    r"|^(sk|sas|sig|signature|auth|authorization)$",
    re.I,
)
# query parameters that sign or authorize a URL: S3 and GCS presigned URLs, Azure SAS (sig),
# OSS signed URLs; not other x-amz-*/x-oss-* parameters (x-oss-process is an image style)
_SECRET_QUERY = re.compile(
    r"^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)"
    r"|sig|signature|ossaccesskeyid|security-token)$",
    re.I,
)
# a Kubernetes quantity as the API server parses it: "100m", "1.5", "256Mi", "1e3", "250000n"
_QUANTITY = re.compile(
    r"^\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
)
# options the under-storage reader would take over what the URI (or the Secret) says
_URI_OPTIONS = ("root", "bucket", "container", "name", "allow_anonymous")
RESERVED_PREFIXES = (names.PREFIX, "topology.kubernetes.io/")
_FASTEST_FIRST = ("MEM", "SSD", "HDD")  # cache tiers' media, in the order they are listed
# Kubernetes label values (the binding's name is one) hold at most 63 characters
MAX_LABEL_VALUE = 63
# sane maxima: far above any real cache, low enough that a typo is caught
MAX_REPLICAS = 1000
MAX_TIER_QUOTA = 2**50  # 1 PiB per worker and tier
# a dataset's spec travels whole into every binding, every watch event and each cluster's
# ConfigMaps (twice: the sidecar's and the workers' configuration; Kubernetes takes at most
# 1 MiB per ConfigMap): what the hub accepts must fit there with room to spare
MAX_SPEC_BYTES = 256 * 2**10


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _split(uri: str) -> tuple[SplitResult, None] | tuple[None, ValueError]:
    """`uri` parsed, its port read (the parser raises only then, for a port of letters or
    out of range, or a broken IPv6 literal); or why it cannot be."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (read for its ValueError)
    except ValueError as err:
        return None, err
    return parts, None


def _secret_params(query: str) -> list[str]:
    """The query's parameters that sign, authorize or hold a credential."""
    return [k for k, _ in parse_qsl(query) if _SECRET_QUERY.match(k) or _SECRET_OPTION.search(k)]


def redacted(uri: str) -> str:
    """A URI fit to print: user and password replaced (they never belong in a spec);
    scheme://*** alone where they end the host part early for the parser, or it cannot
    parse it."""
    parts, _ = _split(uri)
    if parts is None:
        return f"{_host_part(uri)[0] or 'uri'}://***"
    if carries_user(uri):
        return f"{parts.scheme}://***"
    if _secret_params(parts.query):
        parts = parts._replace(query="***")
        uri = parts.geturl()
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


def is_dns_subdomain(value: str) -> bool:
    """Whether `value` is DNS labels joined by dots (its length is the caller's)."""
    return _DNS_SUBDOMAIN.fullmatch(value) is not None


def check_dns_label(value: str, path: str, what: str) -> list[Problem]:
    if len(value) <= 63 and DNS_LABEL.fullmatch(value):
        return []
    return [
        Problem(
            f"{what} {value!r} is not a valid name: use at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'imagenet-train')",
            path=path,
        )
    ]


def check_label_key(key: str, path: str) -> list[Problem]:
    prefix, slash, name = key.rpartition("/")
    ok = bool(name) and len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None
    if slash:
        ok = ok and len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix) is not None
    if ok:
        return []
    return [
        Problem(
            f"label key {key!r} is not valid: use an optional DNS prefix and '/', then at most "
            "63 letters, digits, '-', '_' or '.' (e.g. 'example.com/tier' or 'gpu')",
            path=path,
        )
    ]


def check_label_value(value: str, path: str) -> list[Problem]:
    if len(value) <= 63 and _LABEL_VALUE.fullmatch(value):
        return []
    return [
        Problem(
            f"label value {value!r} is not valid: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit",
            path=path,
        )
    ]


def check_quantity(value: str, path: str) -> list[Problem]:
    """A CPU or memory amount as Kubernetes takes it (empty: not set)."""
    if not value or _QUANTITY.fullmatch(value):
        return []
    return [
        Problem(
            f"{value!r} is not a Kubernetes quantity: an amount of 0 or more, e.g. 500m or 2 "
            "(CPU), 512Mi or 4Gi (memory)",
            path=path,
        )
    ]


def check_resource_name(value: str, path: str) -> list[Problem]:
    """A device or extended resource a container may ask for: domain/name (empty: none)."""
    domain, _, name = value.partition("/")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return [
            Problem(
                f"{value!r} is under kubernetes.io/, which Kubernetes keeps for its own "
                "resources (a pod asking for it is refused): name the resource your device "
                "plugin advertises, e.g. smarter-devices/fuse",
                path=path,
            )
        ]
    if not value or (
        name
        and len(domain) <= 253
        and _DNS_SUBDOMAIN.fullmatch(domain)
        and len(name) <= 63
        and _LABEL_NAME.fullmatch(name)
    ):
        return []
    return [
        Problem(
            f"{value!r} is not a resource name Kubernetes takes: domain/name, e.g. "
            "smarter-devices/fuse (the name your device plugin advertises)",
            path=path,
        )
    ]


def check_labels(labels: dict[str, str], path: str, *, user: bool = True) -> list[Problem]:
    """Labels as Kubernetes takes them; set by a user (`user`), none in fluidfed's own or
    the topology prefixes: fluidfed derives those, and a user's copy would shadow them."""
    problems: list[Problem] = []
    for key, value in labels.items():
        problems += check_label_key(key, f"{path}.{key}")
        problems += check_label_value(value, f"{path}.{key}")
        if user and key.startswith(RESERVED_PREFIXES):
            problems.append(
                Problem(
                    f"label {key!r} is in a prefix fluidfed sets itself "
                    f"({', '.join(RESERVED_PREFIXES)}): use your own prefix (region and zone "
                    "have their own fields)",
                    path=f"{path}.{key}",
                )
            )
    return problems


def check_selector(sel: LabelSelector, path: str) -> list[Problem]:
    # selectors may match the derived labels: no reserved-prefix rule here
    problems = check_labels(sel.match_labels, f"{path}.match_labels", user=False)
    for i, req in enumerate(sel.match_expressions):
        p = f"{path}.match_expressions[{i}]"
        problems += check_label_key(req.key, f"{p}.key")
        if req.operator in ("In", "NotIn") and not req.values:
            problems.append(
                Problem(f"operator {req.operator} needs at least one value", path=f"{p}.values")
            )
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            problems.append(
                Problem(
                    f"operator {req.operator} takes no values; remove 'values'",
                    path=f"{p}.values",
                )
            )
        for j, v in enumerate(req.values):
            problems += check_label_value(v, f"{p}.values[{j}]")
    return problems


def check_cluster(c: Cluster, path: str = "cluster") -> list[Problem]:
    problems = check_dns_label(c.name, f"{path}.name", "cluster name")
    problems += check_labels(c.labels, f"{path}.labels")
    # region and zone become the topology.kubernetes.io labels placement selects on
    for field in ("region", "zone"):
        value = getattr(c, field)
        if value:
            problems += check_label_value(value, f"{path}.{field}")
    problems += check_resource_name(
        c.capabilities.fuse_device_resource, f"{path}.capabilities.fuse_device_resource"
    )
    k = c.kubernetes
    if k.in_cluster and k.kubeconfig:
        problems.append(
            Problem(
                "give either kubeconfig (with an optional context) or in_cluster = true, not both",
                path=f"{path}.kubernetes",
            )
        )
    if k.context and not k.kubeconfig:
        problems.append(
            Problem("context needs a kubeconfig path", path=f"{path}.kubernetes.context")
        )
    if not k.in_cluster and not k.kubeconfig:
        problems.append(
            Problem(
                'say how the agent reaches the cluster: kubeconfig = "path" or in_cluster = true',
                path=f"{path}.kubernetes",
            )
        )
    return problems


def check_mountable(c: Cluster, path: str = "cluster") -> list[Problem]:
    """The rule on a cluster being registered: it can mount datasets, by Fluid's CSI or by
    the FUSE sidecar (its every pod would be refused at admission otherwise:
    `agents/webhook/mutate._security`). Apart from `check_cluster`, as an agent whose
    cluster was registered before the rule still runs (warned), to serve what it holds
    and retire it."""
    if c.can_mount():
        return []
    return [
        Problem(
            "this cluster could mount no dataset: without Fluid's CSI plugin (csi = true and "
            "fluid = true, both) its pods get the FUSE sidecar, which Kubernetes runs only as "
            "a privileged container (its mount reaches the app through Bidirectional mount "
            "propagation; a fuse_device_resource does not replace it): set privileged = true "
            "in [cluster.capabilities] if the platform admits privileged containers, or "
            "csi = true and fluid = true where Fluid and its CSI plugin are installed",
            path=f"{path}.capabilities.privileged",
        )
    ]


def check_cache(
    cache: CacheSpec, path: str, *, new: bool = True, rooted: bool = False
) -> list[Problem]:
    """`new`: as `check_dataset` says; `rooted`: disk tiers without a path keep their
    blocks under a cache root the process has (a worker's or a sidecar's --cache-dir)."""
    problems: list[Problem] = []
    problems += check_quantity(cache.resources.cpu, f"{path}.resources.cpu")
    problems += check_quantity(cache.resources.memory, f"{path}.resources.memory")
    if cache.image:
        # one spec for every cluster would pick what each runs (air-gapped mirrors, the
        # root init container that owns the node's tier directories): the agent's to say
        problems.append(
            Problem(
                "the workers' image is each cluster's own: set worker_image in that "
                "cluster's agent configuration, and remove image here",
                path=f"{path}.image",
            )
        )
    if cache.min_replicas > cache.max_replicas:
        problems.append(
            Problem(
                f"min_replicas ({cache.min_replicas}) is above max_replicas ({cache.max_replicas})",
                path=f"{path}.min_replicas",
            )
        )
    elif cache.max_replicas > MAX_REPLICAS:
        problems.append(
            Problem(
                f"max_replicas ({cache.max_replicas}) is above {MAX_REPLICAS}: is it a typo?",
                path=f"{path}.max_replicas",
            )
        )
    elif not cache.min_replicas <= cache.replicas <= cache.max_replicas:
        problems.append(
            Problem(
                f"replicas ({cache.replicas}) must lie between min_replicas "
                f"({cache.min_replicas}) and max_replicas ({cache.max_replicas})",
                path=f"{path}.replicas",
            )
        )
    if not MIN_BLOCK_SIZE <= cache.block_size <= MAX_BLOCK_SIZE:
        problems.append(
            Problem(
                f"block_size must be between {format_size(MIN_BLOCK_SIZE)} and "
                f"{format_size(MAX_BLOCK_SIZE)}",
                path=f"{path}.block_size",
            )
        )
    if not cache.tiers:
        problems.append(Problem("at least one cache tier is needed", path=f"{path}.tiers"))
    # (JuiceFS's MEM tier is files in /dev/shm, whose floor it keeps: `low_is_floor`)
    floored = engines.RULES[cache.engine].low_is_floor
    problems += _check_tiers(cache.tiers, f"{path}.tiers", new=new, rooted=rooted, floored=floored)
    # (an injected sidecar's tiers take no path: its disk tiers are volumes of its pod)
    problems += _check_tiers(
        cache.sidecar_tiers, f"{path}.sidecar_tiers", new=new, rooted=True, paths=False
    )
    for i, tier in enumerate(cache.sidecar_tiers):
        if tier.path:
            problems.append(
                Problem(
                    "a sidecar's MEM tier is the sidecar's own memory: remove path"
                    if tier.medium == "MEM"
                    else "a sidecar's disk tier is an emptyDir of the reader's pod, which the "
                    "webhook adds and mounts: remove path",
                    path=f"{path}.sidecar_tiers[{i}].path",
                )
            )
    return problems


def _check_tiers(
    tiers: list[CacheTier],
    path: str,
    *,
    new: bool,
    rooted: bool,
    floored: bool = False,
    paths: bool = True,
) -> list[Problem]:
    """A list of cache tiers (a worker's or a sidecar's); `floored`: a MEM tier may keep a
    floor of free space too (`check_cache`); `paths`: their paths are checked here."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, tier in enumerate(tiers):
        p = f"{path}[{i}]"
        if tier.medium in seen:
            problems.append(Problem(f"a second {tier.medium} tier; merge them", path=p))
        elif new and any(_FASTEST_FIRST.index(m) > _FASTEST_FIRST.index(tier.medium) for m in seen):
            # (blocks go into the first tier and move down the list as they are evicted)
            problems.append(
                Problem(
                    f"a {tier.medium} tier after a slower one: list the tiers fastest first "
                    f"({', '.join(_FASTEST_FIRST)}); new blocks go into the first, evicted "
                    "ones move down",
                    path=f"{p}.medium",
                )
            )
        seen.add(tier.medium)
        if tier.quota == 0:
            problems.append(Problem("quota must be above zero", path=f"{p}.quota"))
        elif tier.quota > MAX_TIER_QUOTA:
            problems.append(
                Problem("quota is above 1PiB per tier: is it a typo?", path=f"{p}.quota")
            )
        if tier.medium != "MEM" and not tier.path and not rooted:
            problems.append(
                Problem(f"a {tier.medium} tier needs a directory in 'path'", path=f"{p}.path")
            )
        if paths and tier.path and not tier.path.startswith("/"):
            problems.append(Problem("path must be absolute", path=f"{p}.path"))
        elif paths and ".." in tier.path.split("/"):
            problems.append(
                Problem("path must not contain '..': name the directory itself", path=f"{p}.path")
            )
        if tier.low >= tier.high:
            problems.append(
                Problem(
                    f"low watermark ({tier.low}) must be below high watermark ({tier.high})",
                    path=f"{p}.low",
                )
            )
        if tier.medium == "MEM" and tier.min_free != DISK_MIN_FREE and not floored:
            problems.append(
                Problem(
                    "min_free is a disk tier's (the fraction of its filesystem kept free): "
                    "a MEM tier holds its blocks in memory; leave it out",
                    path=f"{p}.min_free",
                )
            )
        elif tier.min_free >= 1:
            problems.append(
                Problem(
                    f"min_free ({tier.min_free}) is the fraction of the tier's filesystem kept "
                    "free: below 1 (0 turns it off)",
                    path=f"{p}.min_free",
                )
            )
    return problems


def _host_part(uri: str) -> tuple[str, str, str]:
    """(scheme, host part as the parser would end it, the rest after "://") of `uri`;
    ("", "", "") without "://"."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "", "", ""
    return scheme, re.split(r"[/?#]", rest, maxsplit=1)[0], rest


def _port_of(host_part: str) -> str | None:
    """The text after the host's ':' (None without one; IPv6 literals in brackets)."""
    hostport = host_part.rpartition("@")[2]
    if hostport.startswith("["):
        return hostport.partition("]:")[2] if "]:" in hostport else None
    return hostport.rpartition(":")[2] if ":" in hostport else None


def carries_user(uri: str) -> bool:
    """Whether `uri` holds a user or password: before its host, or, where a secret with a
    '/', '?' or '#' in it (as half of AWS's secret keys have) ends the host part early for
    the parser (which then sees no user and a "port" of letters), anywhere before an '@'."""
    scheme, first, rest = _host_part(uri)
    if "@" in first:
        return True
    port = _port_of(first)
    if port is None or port.isdigit() or "@" not in rest:
        return False
    # an empty "port": a secret that starts with '/' (one AWS key in 64), unless NFS's own
    # server:/dir form
    return port != "" or scheme != "nfs"


def _authority_problem(uri: str) -> str:
    """What is wrong with the host part of `uri` that the checks after it would miss or
    print ("" if nothing): a user or password (`carries_user`), even where the parser sees none,
    shown as scheme://*** alone; a port that is not a number or out of range, or a port
    without a host, which fail in every cluster."""
    scheme, first, _ = _host_part(uri)
    if not first:
        return ""
    _, broken = _split(uri)
    if carries_user(uri):  # (shown as scheme://*** alone: a '@' or '/' in it cuts anywhere)
        return (
            f"uri '{scheme}://***' carries credentials: remove them from the URI and name a "
            "Kubernetes Secret (present in each cluster) in 'secret'"
        )
    hostport = first.rpartition("@")[2]
    port = _port_of(first)
    if port and not port.isdigit():
        return f"uri {scheme}://{hostport}: the port after the host is not a number (host:9000)"
    if broken is not None:
        return (
            f"uri {scheme}://{hostport}: {broken}: write host[:port] with a port of 1-65535, "
            "an IPv6 address in brackets ([fd00::1]:9000)"
        )
    if port is not None and hostport.startswith(":") and scheme != "nfs":
        return f"uri {scheme}://{hostport}: names no host before its port"
    return ""


def _check_options(options: dict[str, str], scheme: str, path: str) -> list[Problem]:
    problems: list[Problem] = []
    for key, value in options.items():
        p = f"{path}.options.{key}"
        if _SECRET_OPTION.search(key):
            problems.append(
                Problem(
                    f"option {key!r} looks like a credential: keep credentials in a "
                    "Kubernetes Secret in each cluster and name it in 'secret'",
                    path=p,
                )
            )
        elif carries_user(value):
            problems.append(
                Problem(
                    f"option {key!r} is a URL with a user or password in it: keep "
                    "credentials in a Kubernetes Secret in each cluster and name it in "
                    "'secret' (JuiceFS's metaurl and bucket too)",
                    path=p,
                )
            )
        elif key in ("timeout", "connect_timeout"):
            try:
                seconds = parse_duration(value)
            except (ValueError, TypeError) as err:
                problems.append(Problem(str(err), path=p))
            else:
                if seconds <= 0:
                    problems.append(Problem(f"{key} must be above zero", path=p))
        elif key in _URI_OPTIONS and not (scheme == "juicefs" and key == "bucket"):
            problems.append(
                Problem(
                    f"option {key!r} would override what the uri says: put the bucket and "
                    "the path in the uri itself",
                    path=p,
                )
            )
        elif key == "endpoint":
            broken = _authority_problem(value)
            ep = urlsplit("" if broken else value)
            if broken:
                problems.append(Problem(broken.replace("uri", "endpoint", 1), path=p))
            elif scheme not in ("s3", "oss"):
                problems.append(
                    Problem(f"a {scheme}:// mount takes no endpoint: the uri names it", path=p)
                )
            elif ep.scheme not in ("http", "https") or not ep.netloc:
                problems.append(
                    Problem(
                        f"endpoint {redacted(value)!r} is not an http(s) URL "
                        "(e.g. http://minio.storage:9000)",
                        path=p,
                    )
                )
            elif ep.path not in ("", "/") or ep.username is not None or ep.query:
                problems.append(
                    Problem(
                        "endpoint must be scheme://host[:port] only: a path or credentials "
                        "there would rewrite what the uri says",
                        path=p,
                    )
                )
    return problems


# what fluidfed's readers take from a mount's options themselves; any other option is a
# setting of OpenDAL's service for the scheme
_READER_OPTIONS = {"timeout", "connect_timeout", "region", "endpoint"}
_OPTION_REFUSED = re.compile(r"parse config '([^']+)'")


# why the readers could not open a mount with its options, "" if they could: the data
# library's (`fluidfed.data.ufs.options_problem`, OpenDAL parsing its config), given by
# the hub and the CLI, so this module stays free of it
OptionsCheck = Callable[[Mount], str]


def _reader_options(m: Mount, path: str, options: OptionsCheck) -> list[Problem]:
    """A mount's settings for OpenDAL (the reader of fluidfed's sidecars and workers)
    that OpenDAL cannot parse: the hub took them, and every reader failed to open."""
    if not set(m.options) - _READER_OPTIONS:
        return []
    why = options(m)
    if not why:
        return []
    key = _OPTION_REFUSED.search(why)
    return [
        Problem(
            f"fluidfed's readers (the FUSE sidecar, the cache workers) could not open this "
            f"mount: OpenDAL's {urlsplit(m.uri).scheme} service refuses its options ({why}); "
            "give the setting a value it takes (true/false, a number), or remove it",
            path=f"{path}.options.{key.group(1)}" if key else f"{path}.options",
        )
    ]


def check_placement(pl: Placement, path: str) -> list[Problem]:
    problems: list[Problem] = []
    for i, name in enumerate(pl.clusters):
        problems += check_dns_label(name, f"{path}.clusters[{i}]", "cluster name")
    if pl.selector is not None:
        problems += check_selector(pl.selector, f"{path}.selector")
    return problems


def check_autoscale(a: AutoscalePolicy, path: str) -> list[Problem]:
    problems: list[Problem] = []
    if a.min_replicas > a.max_replicas:
        problems.append(
            Problem(
                f"min_replicas ({a.min_replicas}) is above max_replicas ({a.max_replicas})",
                path=f"{path}.min_replicas",
            )
        )
    if a.max_replicas > MAX_REPLICAS:
        problems.append(
            Problem(
                f"max_replicas ({a.max_replicas}) is above {MAX_REPLICAS}: is it a typo?",
                path=f"{path}.max_replicas",
            )
        )
    seen: set[str] = set()
    for i, t in enumerate(a.targets):
        if t.metric in seen:
            problems.append(
                Problem(f"metric {t.metric} is targeted twice", path=f"{path}.targets[{i}]")
            )
        seen.add(t.metric)
        if not math.isfinite(t.target):  # (JSON has no inf: it would be stored as null)
            problems.append(
                Problem(
                    f"target must be a finite number, got {t.target}",
                    path=f"{path}.targets[{i}].target",
                )
            )
        elif t.metric.endswith("_ratio") and t.target > 1:
            problems.append(
                Problem(
                    f"{t.metric} is a ratio: target must be in (0, 1], got {t.target}",
                    path=f"{path}.targets[{i}].target",
                )
            )
    return problems


def check_dataset(
    d: Dataset,
    path: str = "dataset",
    *,
    named: bool = True,
    new: bool = True,
    options: OptionsCheck | None = None,
) -> list[Problem]:
    """The rules of a dataset spec its types cannot say. `named`: the name is checked
    against rules added since names were first taken (False for a dataset the hub holds
    already: it can still be updated); `new`: every rule as the hub takes a spec now
    (False: a copy taken before, a sidecar's or a worker's, which must still run);
    `options`: what says whether the readers can open a mount with its settings."""
    problems = check_dns_label(d.name, f"{path}.name", "dataset name")
    if named and new and not problems and d.name[0].isdigit():
        problems.append(
            Problem(
                f"dataset name {d.name!r} starts with a digit: Fluid's dataset controller "
                "refuses such names (a DNS-1035 label), and a dataset may be placed on a "
                f"cluster with Fluid; start it with a letter (e.g. 'ds-{d.name}')",
                path=f"{path}.name",
            )
        )
    if named and new and not problems:
        problems += engines.check_name(d, path)
    problems += check_dns_label(d.namespace, f"{path}.namespace", "namespace")
    problems += check_labels(d.labels, f"{path}.labels")
    mount_paths: set[str] = set()
    unparsed = False
    for i, m in enumerate(d.mounts):
        p = f"{path}.mounts[{i}]"
        authority = _authority_problem(m.uri)
        if authority:
            problems.append(Problem(authority, path=f"{p}.uri"))
            unparsed = True
            continue  # (nothing else of it is read, nor shown)
        parts = urlsplit(m.uri)
        shown = redacted(m.uri)
        if new and (m.uri != m.uri.strip() or _CONTROL.search(m.uri)):
            # (urlsplit drops them before it parses: the checks below passed, and Fluid's
            # runtimes were handed the URI with them)
            problems.append(
                Problem(
                    f"uri {shown!r} has a control character or whitespace at an end: write it "
                    "without (a space inside a path as %20)",
                    path=f"{p}.uri",
                )
            )
        signed = _secret_params(parts.query)
        if parts.username is not None or parts.password is not None or signed:
            if signed:  # neither the signature nor a password beside it is shown
                shown = urlsplit(redacted(m.uri))._replace(query="***").geturl()
            problems.append(
                Problem(
                    f"uri {shown!r} carries credentials: remove them from the URI and name a "
                    "Kubernetes Secret (present in each cluster) in 'secret'",
                    path=f"{p}.uri",
                )
            )
        if parts.scheme not in URI_SCHEMES:
            problems.append(
                Problem(
                    f"uri {shown!r} has no supported scheme: use one of "
                    + ", ".join(f"{s}://" for s in URI_SCHEMES),
                    path=f"{p}.uri",
                )
            )
        elif parts.scheme in ("s3", "oss", "http", "https", "dataset") and not parts.netloc:
            what = {"dataset": "a dataset name"}.get(parts.scheme, "a bucket or host")
            problems.append(Problem(f"uri {shown!r} names no {what}", path=f"{p}.uri"))
        elif parts.scheme == "file" and parts.netloc not in ("", "localhost"):
            problems.append(
                Problem(
                    f"uri {shown!r} names a host ({parts.netloc}): a file:// mount is a "
                    "directory on each node, written file:///data (three slashes)",
                    path=f"{p}.uri",
                )
            )
        elif parts.scheme == "file" and not parts.path.startswith("/"):
            problems.append(
                Problem(f"uri {shown!r} needs an absolute path (file:///data)", path=f"{p}.uri")
            )
        elif parts.scheme == "nfs" and (not parts.hostname or not parts.path.startswith("/")):
            problems.append(
                Problem(
                    f"uri {shown!r} needs a server and an absolute directory (nfs://server:/dir)",
                    path=f"{p}.uri",
                )
            )
        elif parts.scheme == "juicefs" and (parts.netloc or not parts.path.startswith("/")):
            problems.append(
                Problem(
                    f"uri {shown!r} is not a JuiceFS directory: juicefs:///<subdir> (the "
                    "volume comes from the metadata URL in the Secret)",
                    path=f"{p}.uri",
                )
            )
        said = _check_options(m.options, parts.scheme, p)
        problems += said
        if options is not None and new and not said and parts.scheme in engines.SIDECAR_SCHEMES:
            problems += _reader_options(m, p, options)
        if m.name:
            problems += check_dns_label(m.name, f"{p}.name", "mount name")
        if m.secret:
            problems += check_dns_label(m.secret, f"{p}.secret", "secret name")
        if new and len(d.mounts) > 1 and not m.name and not m.path:
            # (fluidfed's readers showed it at the root, Fluid at /m<index>: two trees)
            problems.append(
                Problem(
                    f"one of {len(d.mounts)} mounts needs a name or a path: the dataset shows "
                    "each at /<name> (or its path) in every cluster, Fluid's included",
                    path=f"{p}.name",
                )
            )
        if new and m.path and m.path != posixpath.normpath("/" + m.path.lstrip("/")):
            # (fluidfed's readers showed `train/` at /train; Fluid's Alluxio and Jindo put a
            # relative path at /<name>, and ThinRuntime compares paths as written)
            problems.append(
                Problem(
                    f"path {m.path!r} is not absolute and normalised: write "
                    f"{posixpath.normpath('/' + m.path.lstrip('/'))!r}, as every cluster's "
                    "readers, Fluid's included, then show it",
                    path=f"{p}.path",
                )
            )
        where = m.path or (m.name if len(d.mounts) > 1 else "")
        mpath = posixpath.normpath("/" + where.lstrip("/"))
        if new and m.path and mpath == "/" and len(d.mounts) > 1:
            # (Fluid's Alluxio mounts a root path only as a dataset's one mount: its mount
            # script skips it beside others, so that cluster's tree would lack it)
            problems.append(
                Problem(
                    f"path {m.path!r} puts this mount at the dataset's root, where its "
                    f"{len(d.mounts) - 1} other mount(s) appear too: give it a path of its "
                    "own (e.g. '/" + (m.name or "data") + "'), or declare it alone",
                    path=f"{p}.path",
                )
            )
        if mpath in mount_paths:
            problems.append(
                Problem(
                    f"two mounts appear at {mpath}: give each a distinct name or path",
                    path=f"{p}.path",
                )
            )
        mount_paths.add(mpath)
    if unparsed:  # (what follows parses every mount's uri: said once that is fixed)
        return problems
    problems += engines.check(d, path, new=new)
    problems += check_cache(d.cache, f"{path}.cache", new=new)
    problems += check_placement(d.placement, f"{path}.placement")
    namespaces: set[str] = set()
    for i, a in enumerate(d.access):
        p = f"{path}.access[{i}]"
        problems += check_dns_label(a.namespace, f"{p}.namespace", "namespace")
        if a.namespace in namespaces:
            problems.append(
                Problem(f"namespace {a.namespace} is listed twice", path=f"{p}.namespace")
            )
        namespaces.add(a.namespace)
        if a.sub_path.startswith("/") or ".." in a.sub_path.split("/"):
            problems.append(
                Problem(
                    "sub_path must be relative to the dataset root and must not contain '..'",
                    path=f"{p}.sub_path",
                )
            )
    if d.autoscale is not None:
        auto = check_autoscale(d.autoscale, f"{path}.autoscale")
        problems += auto
        pol, c = d.autoscale, d.cache
        if not auto and (pol.max_replicas > c.max_replicas or pol.min_replicas < c.min_replicas):
            problems.append(
                Problem(
                    f"autoscale may set {pol.min_replicas}-{pol.max_replicas} replicas, "
                    f"outside cache's bounds ({c.min_replicas}-{c.max_replicas}): keep "
                    "autoscale's within them, or widen cache.min_replicas/max_replicas",
                    path=f"{path}.autoscale.max_replicas"
                    if pol.max_replicas > c.max_replicas
                    else f"{path}.autoscale.min_replicas",
                )
            )
    problems += _check_size(d, path)
    return problems


def _json_size(obj: object) -> int:
    """Bytes of `obj` as JSON (sizes and durations as the numbers they are)."""
    return len(
        msgspec.json.encode(obj, enc_hook=lambda o: int(o) if isinstance(o, int) else float(o))
    )


def _check_size(d: Dataset, path: str) -> list[Problem]:
    size = _json_size(d)
    if size <= MAX_SPEC_BYTES:
        return []
    parts = {f"{path}.mounts[{i}]": m for i, m in enumerate(d.mounts)}
    parts |= {f"{path}.{f}": getattr(d, f) for f in d.__struct_fields__ if f != "mounts"}
    biggest = max(parts, key=lambda k: _json_size(parts[k]))
    return [
        Problem(
            f"the spec is {format_size(size)}, above {format_size(MAX_SPEC_BYTES)}, mostly "
            f"{biggest}: each cluster keeps it in ConfigMaps (Kubernetes takes 1 MiB at "
            "most) and every watch event carries it; keep large values out of the spec",
            path=biggest,
        )
    ]


def check_hub(h: HubConfig, path: str = "hub") -> list[Problem]:
    problems: list[Problem] = []
    if not h.data_dir:
        problems.append(Problem("data_dir must name a directory", path=f"{path}.data_dir"))
    if h.lease_duration < 1:
        problems.append(
            Problem("lease_duration must be at least 1s", path=f"{path}.lease_duration")
        )
    for name in ("bookmark_interval", "autoscale_interval", "metrics_stale_after", "leader_lease"):
        if not getattr(h, name) > 0:  # (a loop on 0 spins a core)
            problems.append(Problem(f"{name} must be above zero", path=f"{path}.{name}"))
    members = [m.strip() for m in h.store.removeprefix("etcd://").split(",") if m.strip()]
    remote = [m for m in members if not is_loopback(m.rpartition(":")[0].strip("[]"))]
    if h.etcd_username and not (h.etcd_ca_file or h.etcd_cert_file) and remote:
        problems.append(
            Problem(
                f"etcd_username without TLS to etcd (etcd_ca_file, or a client certificate) "
                f"sends the password, and the catalog with it, in clear to {remote[0]}: "
                "give etcd_ca_file",
                path=f"{path}.etcd_ca_file",
            )
        )
    return problems


def check_document(
    doc: Document,
    dataset_path: str = "dataset[{i}]",
    options: OptionsCheck | None = None,
    *,
    mountable: bool = True,
) -> list[Problem]:
    """Every problem of a document; with `mountable`, its cluster must be one the hub
    registers (`check_mountable`)."""
    problems: list[Problem] = []
    if doc.cluster is None and not doc.dataset and doc.hub is None and doc.agent is None:
        problems.append(
            Problem(
                "the file declares nothing: expected a [cluster], [dataset], [hub] or [agent] table"
            )
        )
    if doc.cluster is not None:
        problems += check_cluster(doc.cluster)
        if mountable:
            problems += check_mountable(doc.cluster)
    names: set[str] = set()
    for i, d in enumerate(doc.dataset):
        p = dataset_path.format(i=i)
        # (the rule on new names is the hub's: it knows which are taken already)
        problems += check_dataset(d, p, named=False, options=options)
        if d.name in names:
            problems.append(Problem(f"dataset {d.name} is declared twice", path=f"{p}.name"))
        names.add(d.name)
    if doc.hub is not None:
        problems += check_hub(doc.hub)
    if doc.agent is not None:
        problems += check_agent(doc.agent)
    return problems


def hub_url_problem(value: str) -> str:
    """What is wrong with a hub URL, or a comma-separated list of replicas' ("": nothing);
    never the URL itself where it may hold a password."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        return "name the hub: http(s)://HOST[:PORT], or several replicas' separated by commas"
    for url in urls:
        if carries_user(url):  # (before it is parsed: a '/' in a password ends the host)
            return (
                "the hub's URL carries credentials: remove them, and give the token with "
                "--token, FLUIDFED_TOKEN or a token file"
            )
        parts, _ = _split(url)  # (None: "http://[::1", a port past 65535)
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.port == 0
        ):
            return f"expected http(s)://HOST[:PORT], got {url!r}"
    return ""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is this machine's loopback only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_agent(a: AgentConfig, path: str = "agent") -> list[Problem]:
    problems: list[Problem] = []
    if not a.cluster_file:
        problems.append(Problem("name the cluster's TOML file", path=f"{path}.cluster_file"))
    if bad := hub_url_problem(a.hub):
        problems.append(Problem(bad, path=f"{path}.hub"))
    elif (a.ca_file or a.client_cert_file) and not a.hub.startswith("https://"):
        problems.append(
            Problem(
                "ca_file and client certificates are for an https:// hub: use its https URL",
                path=f"{path}.hub",
            )
        )
    if bool(a.client_cert_file) != bool(a.client_key_file):
        problems.append(
            Problem(
                "client_cert_file and client_key_file go together: give both or neither",
                path=f"{path}.client_cert_file",
            )
        )
    problems += check_quantity(a.sidecar_cpu, f"{path}.sidecar_cpu")
    problems += check_quantity(a.sidecar_memory, f"{path}.sidecar_memory")
    scheme = a.api_url.partition("://")[0].lower() if "://" in a.api_url else ""
    wildcard = a.api_host in ("0.0.0.0", "::", "")
    if a.api_url and scheme not in ("http", "https"):
        problems.append(
            Problem(f"api_url must be an http(s) URL, got {a.api_url!r}", path=f"{path}.api_url")
        )
    elif not a.api_url and wildcard and a.api_tls != "off":
        problems.append(
            Problem(
                f"api_host {a.api_host!r} listens on every address: give api_url, the "
                "https:// name the pods reach the agent by (its certificate is for that name)",
                path=f"{path}.api_url",
            )
        )
    elif scheme == "https" and a.api_tls == "off":
        problems.append(
            Problem(
                'api_tls = "off" serves plain HTTP: write api_url with http://, or turn TLS on',
                path=f"{path}.api_url",
            )
        )
    elif scheme == "http" and a.api_tls == "on":
        problems.append(
            Problem(
                'api_tls = "on" serves HTTPS: write api_url with https://',
                path=f"{path}.api_url",
            )
        )
    elif scheme == "http" and a.api_tls == "auto" and not is_loopback(a.api_host):
        problems.append(
            Problem(
                f"the API listens beyond loopback ({a.api_host}), so it serves HTTPS: write "
                'api_url with https://, or set api_tls = "off" if the pod network is encrypted '
                "by other means",
                path=f"{path}.api_url",
            )
        )
    if a.api_url and scheme in ("http", "https") and (bad := url_host_problem(a.api_url)):
        problems.append(
            Problem(
                f"api_url: {bad} (e.g. https://agent.ns.svc:8471)",
                path=f"{path}.api_url",
            )
        )
    for name in ("heartbeat_interval", "status_interval", "resync_interval"):
        if not getattr(a, name) > 0:  # (a loop on 0 spins a core)
            problems.append(Problem(f"{name} must be above zero", path=f"{path}.{name}"))
    problems += _check_webhook(a, path)
    problems += _check_certificates(a, path)
    for name in ("worker_image", "sidecar_image"):
        image = getattr(a, name)
        if not _IMAGE.fullmatch(image):
            problems.append(
                Problem(
                    f"{name} {image!r} is not an image reference: REGISTRY/NAME[:TAG][@DIGEST] "
                    "in lowercase, e.g. ghcr.io/fluidfed/fluidfed:0.1.0 (pods would be "
                    "refused, or wait on InvalidImageName)",
                    path=f"{path}.{name}",
                )
            )
    return problems


# an image reference as the kubelet takes it (the distribution grammar, ASCII):
# [domain[:port]/]component[/component...][:tag][@algorithm:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-f]{32,})?",
    re.ASCII,
)
MIN_WEBHOOK_CERT = 86400.0  # a day: renewed hourly at most, a shorter one lapses between


def url_host_problem(url: str) -> str:
    """What keeps `url` from naming a host to call ("" if nothing)."""
    if carries_user(url):
        return "a user or password does not go in it"
    parts, broken = _split(url)
    if parts is None:
        return str(broken)
    if not parts.hostname:
        return "it names no host"
    if parts.query or parts.fragment:
        return "it takes no query or fragment"
    return ""


def _check_webhook(a: AgentConfig, path: str) -> list[Problem]:
    """The sidecar webhook's settings: the URL the API server calls (its certificate is for
    that host), and a serving certificate that lives long enough to be renewed in time."""
    if not a.webhook:
        return []
    problems: list[Problem] = []
    if a.webhook_client_name and not a.webhook_client_ca_file:
        problems.append(
            Problem(
                "webhook_client_name needs webhook_client_ca_file, the CA that signs the API "
                "server's client certificate",
                path=f"{path}.webhook_client_ca_file",
            )
        )
    if a.webhook_url:
        bad = url_host_problem(a.webhook_url)
        if not a.webhook_url.startswith("https://"):
            bad = "the API server calls webhooks over https:// only"
        if bad:
            problems.append(
                Problem(
                    f"webhook_url: {bad} (e.g. https://fluidfed-agent.fluidfed-system.svc:"
                    "8443/mutate)",
                    path=f"{path}.webhook_url",
                )
            )
    elif a.webhook_host in ("0.0.0.0", "::", ""):
        problems.append(
            Problem(
                f"webhook_host {a.webhook_host!r} listens on every address: give webhook_url, "
                "the https:// name the API server reaches the webhook by (its certificate is "
                "for that name)",
                path=f"{path}.webhook_url",
            )
        )
    return problems


def _check_certificates(a: AgentConfig, path: str) -> list[Problem]:
    """The lifetime of the certificates the agent makes itself (its webhook's and its API's
    serving ones) and when they are renewed: looked at hourly, one that lapses sooner, or
    is due again on every look (a loop that spins), is refused."""
    if a.webhook_cert_lifetime < MIN_WEBHOOK_CERT:
        return [
            Problem(
                "webhook_cert_lifetime must be at least 1d: the certificates are looked at "
                "hourly, and a shorter one lapses before it is renewed",
                path=f"{path}.webhook_cert_lifetime",
            )
        ]
    if not 3600 <= a.webhook_renew_before <= a.webhook_cert_lifetime / 2:
        return [
            Problem(
                "webhook_renew_before must be at least 1h and at most half of "
                f"webhook_cert_lifetime ({format_duration(a.webhook_cert_lifetime / 2)}): "
                "renewed on every look otherwise",
                path=f"{path}.webhook_renew_before",
            )
        ]
    return []
