"""The data of fluidfed: what users declare, what the hub stores, what travels on the wire.

Two bases carry the policy:

* `Spec` - what a user writes (TOML, `fluidfed apply`, the API's request bodies).
  Unknown fields are errors, so a typo fails loudly instead of being ignored.
* `Wire` - what the hub and the agents exchange (bindings, status, events).
  Unknown fields are tolerated so mixed versions can talk during an upgrade.

Types here are checked by msgspec (types, ranges); the cross-field rules live in
`fluidfed.validation`, which reports every problem with its field path.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

import msgspec
from msgspec import Meta

from fluidfed import names
from fluidfed.units import ByteSize, Duration


def _bytes(n: int) -> ByteSize:
    # defaults stay plain numbers so schema generation and encoding need no hooks
    return cast(ByteSize, n)


def _seconds(n: float) -> Duration:
    return cast(Duration, float(n))


class Spec(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, frozen=True
):
    pass


class Wire(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """What the hub keeps and sends. Untracked by the garbage collector (gc=False): these
    are trees of values that never refer back to themselves, and the hub holds one per
    binding (10,000 clusters x datasets: every full collection walked them all again)."""


ClusterKind = Literal["standard", "serverless", "edge"]
MountMode = Literal["csi", "sidecar"]
Medium = Literal["MEM", "SSD", "HDD"]
Engine = Literal["fluidfed", "thin", "alluxio", "jindo", "juicefs", "efc"]
SelectorOp = Literal["In", "NotIn", "Exists", "DoesNotExist"]
NonNegInt = Annotated[int, Meta(ge=0)]
Ratio = Annotated[float, Meta(ge=0.0, le=1.0)]

CLUSTER_KINDS: tuple[ClusterKind, ...] = ("standard", "serverless", "edge")


# --- clusters ---------------------------------------------------------------------------


class Capabilities(Spec, frozen=True):
    """What the cluster offers; placement picks the mount mode from it."""

    csi: bool = False  # a CSI driver can mount datasets (Fluid's CSI plugin)
    fluid: bool = False  # Fluid's controllers and CRDs are installed
    privileged: bool = False  # pods may run privileged containers
    native_sidecar: bool = True  # Kubernetes >= 1.28: init containers with restartPolicy Always
    # a device resource the FUSE sidecar asks for /dev/fuse by (e.g. "smarter-devices/fuse"),
    # for scheduling on platforms that hand it out so: the sidecar still runs privileged
    fuse_device_resource: str = ""


class KubeAccess(Spec, frozen=True):
    """How the cluster's agent reaches its Kubernetes API."""

    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False


class Cluster(Spec, frozen=True):
    name: str
    kind: ClusterKind = "standard"
    region: str = ""
    zone: str = ""
    labels: dict[str, str] = {}
    capabilities: Capabilities = Capabilities()
    kubernetes: KubeAccess = KubeAccess(in_cluster=True)

    def mount_mode(self) -> MountMode:
        return "csi" if self.capabilities.csi and self.capabilities.fluid else "sidecar"

    def can_mount(self) -> bool:
        """Whether its pods can mount a dataset: by Fluid's CSI, or by the FUSE sidecar,
        which runs only privileged (`validation.check_mountable` says why not)."""
        return self.mount_mode() == "csi" or self.capabilities.privileged

    def selector_labels(self) -> dict[str, str]:
        """Labels a selector sees: the user's, plus the well-known ones fluidfed derives."""
        derived = {
            names.CLUSTER_LABEL: self.name,
            names.KIND_LABEL: self.kind,
            names.MOUNT_MODE_LABEL: self.mount_mode(),
        }
        if self.region:
            derived[names.REGION_LABEL] = self.region
        if self.zone:
            derived[names.ZONE_LABEL] = self.zone
        return {**derived, **self.labels}


# --- datasets ---------------------------------------------------------------------------


class Mount(Spec, frozen=True):
    # s3://bucket/prefix, oss://, https://host/path, file:///path, dataset://name, and for
    # Fluid's engines nfs://server:/dir (EFC) and juicefs:///subdir (JuiceFS)
    uri: str
    name: str = ""
    path: str = ""  # where the mount appears inside the dataset; default "/" or "/<name>"
    options: dict[str, str] = {}  # endpoint, region, ... never credentials
    secret: str = ""  # name of a Kubernetes Secret, present in each cluster, with credentials


# a disk tier's default floor of free space on its filesystem: kubelet evicts pods where
# less than 10% of the node's is free, and the default stays clear of that
DISK_MIN_FREE = 0.15


class CacheTier(Spec, frozen=True):
    medium: Medium
    quota: ByteSize
    path: str = ""  # a directory for SSD/HDD; MEM uses memory
    high: Ratio = 0.95  # evict once usage passes this fraction of the quota
    low: Ratio = 0.7  # ... down to this fraction
    # a disk tier keeps this fraction of its filesystem free, whatever its quota
    min_free: Ratio = DISK_MIN_FREE


class Resources(Spec, frozen=True):
    cpu: str = ""
    memory: str = ""


class CacheSpec(Spec, frozen=True):
    # the Fluid runtime where the cluster mounts by CSI (fluidfed.engines): fluidfed's own
    # ThinRuntimeProfile by default; `profile` names the cluster's own for engine "thin"
    engine: Engine = "fluidfed"
    profile: str = ""
    replicas: NonNegInt = 1
    min_replicas: NonNegInt = 0
    max_replicas: NonNegInt = 10
    block_size: ByteSize = _bytes(4 * 2**20)
    image: str = ""
    resources: Resources = Resources()
    tiers: list[CacheTier] = msgspec.field(
        default_factory=lambda: [CacheTier(medium="MEM", quota=_bytes(2**30))]
    )
    # the tiers of each FUSE sidecar the webhook injects (none: 128 MiB of memory); a disk
    # tier is an emptyDir of the reader's pod, its quota the sidecar's request of ephemeral
    # storage, so it takes no path: where no cache worker shares a node with the readers
    # (serverless nodes, an edge site without workers), a dataset larger than memory stays
    # at hand
    sidecar_tiers: list[CacheTier] = []


class SelectorRequirement(Spec, frozen=True):
    key: str
    operator: SelectorOp
    values: list[str] = []


class LabelSelector(Spec, frozen=True):
    match_labels: dict[str, str] = {}
    match_expressions: list[SelectorRequirement] = []


class Placement(Spec, frozen=True):
    """Which clusters get the dataset. Every given filter must hold; none given means all."""

    clusters: list[str] = []
    selector: LabelSelector | None = None
    kinds: list[ClusterKind] = []
    max_clusters: NonNegInt = 0  # 0: no limit
    spread_by: Literal["", "region", "zone"] = ""


class Access(Spec, frozen=True):
    """A namespace whose pods may use the dataset, and how they see it."""

    namespace: str
    sub_path: str = ""
    read_only: bool = True


AutoscaleMetric = Literal["cache_used_ratio", "hit_ratio", "read_throughput_per_worker"]


class AutoscaleTarget(Spec, frozen=True):
    metric: AutoscaleMetric
    target: Annotated[float, Meta(gt=0.0)]  # ratio for *_ratio, bytes/second for throughput


class AutoscalePolicy(Spec, frozen=True):
    targets: Annotated[list[AutoscaleTarget], Meta(min_length=1)]
    min_replicas: NonNegInt = 1
    max_replicas: NonNegInt = 10
    tolerance: Ratio = 0.1
    scale_up_window: Duration = _seconds(0)
    scale_down_window: Duration = _seconds(300)
    max_step: Annotated[int, Meta(ge=1)] = 4
    idle_after: Duration = _seconds(0)  # 0: never scale to zero


class Dataset(Spec, frozen=True):
    name: str
    mounts: Annotated[list[Mount], Meta(min_length=1)]
    namespace: str = "default"  # the home namespace in every cluster
    description: str = ""
    labels: dict[str, str] = {}
    cache: CacheSpec = CacheSpec()
    placement: Placement = Placement()
    access: list[Access] = []  # empty: the home namespace only, read-only
    autoscale: AutoscalePolicy | None = None

    def access_list(self) -> list[Access]:
        return self.access or [Access(namespace=self.namespace)]


# --- hub daemon configuration -----------------------------------------------------------


class HubConfig(Spec, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8470
    data_dir: str = ".fluidfed/hub"
    admin_token_file: str = ""  # read the admin token from this file ...
    admin_token_env: str = "FLUIDFED_ADMIN_TOKEN"  # ... or this variable; else generated
    # a token that reads /metrics and nothing else (a Prometheus scrape's); without it
    # /metrics takes the admin token or a cluster's, as /openapi.json does
    metrics_token_file: str = ""
    lease_duration: Duration = _seconds(40)
    max_body: ByteSize = _bytes(2**20)
    event_history: Annotated[int, Meta(ge=100)] = 10000  # watch events kept, at most ...
    event_history_bytes: ByteSize = _bytes(64 * 2**20)  # ... and at most this many bytes
    bookmark_interval: Duration = _seconds(10)
    autoscale_interval: Duration = _seconds(15)  # how often the autoscaler decides
    metrics_stale_after: Duration = _seconds(60)  # older metrics mean no decision
    # HTTPS: a serving certificate and its key (PEM); with client_ca_file, agents must
    # present a certificate from that CA whose common name is their cluster (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    client_ca_file: str = ""
    # the catalog's store: "" is the embedded SQLite file in data_dir (one hub); several
    # hub replicas share "etcd://HOST:PORT,HOST:PORT,..." (the `etcd` extra)
    store: str = ""
    etcd_prefix: str = "/fluidfed/"  # the catalog's keys in etcd
    # compact etcd's history as the event history moves on: all of it, since etcd keeps one
    # history for every key; false on an etcd shared with others (it then compacts itself:
    # --auto-compaction-retention), so their watches keep what they need
    etcd_compact: bool = True
    etcd_ca_file: str = ""  # TLS to etcd: its members' CA ...
    etcd_cert_file: str = ""  # ... and this hub's client certificate, where etcd asks
    etcd_key_file: str = ""
    etcd_username: str = ""  # etcd's own authentication: the user, its password from ...
    etcd_password_file: str = ""  # ... this file, or ...
    etcd_password_env: str = "FLUIDFED_ETCD_PASSWORD"  # ... this variable
    leader_lease: Duration = _seconds(3)  # another replica leads within about this long
    # plain HTTP on an address beyond loopback (no tls_cert_file, no --self-signed): refused
    # unless this is set, where the network encrypts by other means (a service mesh's mTLS)
    plain_http: bool = False

    def __post_init__(self) -> None:
        if self.store and not self.store.startswith("etcd://"):
            raise ValueError(
                "store: leave it empty for the embedded SQLite file in data_dir, or write "
                "etcd://HOST:PORT[,HOST:PORT...] for hub replicas that share etcd"
            )
        if "@" in self.store:  # (the message does not repeat it: it may hold a password)
            raise ValueError(
                "store: a user or password does not go in the etcd URL: set etcd_username "
                "and etcd_password_file (or etcd_password_env)"
            )
        if bool(self.etcd_cert_file) != bool(self.etcd_key_file):
            raise ValueError("etcd_cert_file and etcd_key_file go together: give both or neither")
        if not self.etcd_prefix.startswith("/") or not self.etcd_prefix.endswith("/"):
            raise ValueError("etcd_prefix starts and ends with '/', e.g. /fluidfed/")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        if self.client_ca_file and not self.tls_cert_file:
            raise ValueError("client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")


class AgentConfig(Spec, frozen=True):
    """One cluster's agent: `fluidfed agent run --config agent.toml`."""

    cluster_file: str  # the cluster's own TOML (the one registered with the hub)
    hub: str = "http://127.0.0.1:8470"
    # an https hub's certificate is verified against ca_file (else the system's roots);
    # client_cert_file/client_key_file: this cluster's certificate, where the hub asks for
    # one (mutual TLS); relative paths are relative to this file
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    token_file: str = ""  # the cluster token; else token_env; else the one saved in state_dir
    token_env: str = "FLUIDFED_AGENT_TOKEN"
    bootstrap_token_env: str = "FLUIDFED_BOOTSTRAP_TOKEN"  # registers the cluster if unknown
    state_dir: str = ".fluidfed/agent"
    kubernetes: KubeAccess | None = None  # default: the cluster file's
    heartbeat_interval: Duration = _seconds(10)
    status_interval: Duration = _seconds(5)
    resync_interval: Duration = _seconds(300)
    worker_image: str = "ghcr.io/fluidfed/fluidfed:0.1.0"
    sidecar_image: str = "ghcr.io/fluidfed/fluidfed:0.1.0"
    workers: Annotated[int, Meta(ge=1, le=64)] = 4  # bindings reconciled at once
    # the sidecar webhook (sidecar-mode clusters)
    webhook: bool = True
    webhook_host: str = "127.0.0.1"
    webhook_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0: any free port
    webhook_url: str = ""  # what the API server calls; default https://<host>:<port>/mutate
    webhook_cert_lifetime: Duration = _seconds(30 * 86400)
    # the API server's own client certificate when it calls webhooks (its admission
    # configuration's kubeConfigFile, where the platform lets one be set): the CA that
    # signs it and the common name it carries; with them /mutate answers no other caller
    webhook_client_ca_file: str = ""
    webhook_client_name: str = ""
    webhook_renew_before: Duration = _seconds(7 * 86400)
    sidecar_cpu: str = ""
    sidecar_memory: str = ""
    # the agent's own API (cache workers register here and report their blocks)
    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Meta(ge=0, le=65535)] = 0  # 0: any free port
    api_url: str = ""  # how the workers reach it; default http(s)://<api_host>:<port>
    # HTTPS for the API (a certificate from the agent's own CA, which the binding's Secrets
    # hand to workers and sidecars): "auto" when it listens beyond loopback (pods on other
    # machines reach it), "on", or "off" (the operator says the network is private)
    api_tls: Literal["auto", "on", "off"] = "auto"
    # HTTPS between sidecars, cache workers and the agent, with each binding's own CA:
    # "off" only where the pod network is encrypted by other means (a WireGuard CNI, say);
    # TLS costs the data path CPU (figures: README, "Encryption" in "The data path")
    data_tls: Literal["on", "off"] = "on"
    metrics_window: Duration = _seconds(15)  # rates and ratios sent to the hub cover this
    # `dataset load --on-change` on fluidfed's workers: how often the under storage is
    # looked at again (only what changed is pulled)
    on_change_interval: Duration = _seconds(60)
    # the data-path keys of each binding (Secrets): a new key every `credential_rotation`
    # (0: only on SIGHUP); it signs once handed out for `credential_grace` (longer than
    # the kubelet takes to update a Secret volume), and the old one goes a grace later
    credential_rotation: Duration = _seconds(7 * 86400)
    credential_grace: Duration = _seconds(300)


class Document(Spec, frozen=True):
    """One TOML file: a cluster, one or more datasets, a hub or an agent configuration."""

    cluster: Cluster | None = None
    dataset: list[Dataset] = []
    hub: HubConfig | None = None
    agent: AgentConfig | None = None


# --- the hub's catalog on the wire ------------------------------------------------------


class Condition(Wire):
    type: Literal["Ready", "Offline"]
    since: float  # unix time of the last transition
    reason: str = ""


class ClusterStatus(Wire):
    condition: Condition | None = None
    last_heartbeat: float = 0.0


class ClusterRecord(Wire):
    spec: Cluster
    status: ClusterStatus = msgspec.field(default_factory=ClusterStatus)
    revision: int = 0

    @property
    def ready(self) -> bool:
        return self.status.condition is not None and self.status.condition.type == "Ready"


class LoadRequest(Wire):
    """A warm-up asked for with `fluidfed dataset load`: the cluster's cache workers pull
    the dataset (or `path` in it) from the under storage."""

    id: int  # the hub's revision when it was asked for: newer asks have larger ids
    path: str = ""
    requested_at: float = 0.0
    # Fluid's load policies: Cron (again on this schedule, fluidfed.cron) and OnEvent (again
    # whenever the under storage changed: only what changed is pulled)
    schedule: str = ""
    on_change: bool = False
    # the client's idempotency key: the same ask sent again (to another hub replica, its
    # answer lost) is this request, not a new one
    key: str = ""


LoadPhase = Literal["Waiting", "Running", "Done", "Failed"]


class LoadStatus(Wire):
    id: int
    phase: LoadPhase = "Waiting"
    path: str = ""
    workers: NonNegInt = 0
    blocks: NonNegInt = 0  # blocks under the path, over all workers
    done: NonNegInt = 0  # blocks pulled (or found cached) so far
    cached: NonNegInt = 0  # blocks in the cache when the load finished
    bytes: NonNegInt = 0
    errors: NonNegInt = 0
    message: str = ""
    ufs_bytes: NonNegInt = 0  # the under storage's bytes under the path

    def percent(self) -> float:
        if not self.blocks:
            return 100.0 if self.phase == "Done" else 0.0
        got = self.cached if self.phase in ("Done", "Failed") else self.done
        return 100.0 * got / self.blocks


class Binding(Wire):
    """One dataset placed on one cluster: what that cluster's agent must make real."""

    name: str  # "<dataset>.<cluster>": both are DNS labels, so the dot keeps it unique
    dataset: str
    cluster: str
    mode: MountMode
    replicas: NonNegInt
    generation: int  # the dataset's generation this binding was made from
    spec: Dataset
    revision: int = 0
    deleting: bool = False  # retired: the agent removes what it made, then finalizes it
    load: LoadRequest | None = None  # the latest warm-up asked for


Phase = Literal["Pending", "Bound", "Degraded", "Failed", "Deleting"]


class Figures(Wire):
    """What the data path measured over the agent's sliding window, sent with a binding's
    status: the figures the hub's autoscaler decides on. None: nothing fresh to say."""

    read_bytes_per_second: Annotated[float, Meta(ge=0.0)] | None = None  # the sidecars' reads
    hit_ratio: Ratio | None = None  # the workers' hits over hits and misses
    cache_used_ratio: Ratio | None = None  # the workers' used bytes over their capacity

    def empty(self) -> bool:
        return (
            self.read_bytes_per_second is None
            and self.hit_ratio is None
            and self.cache_used_ratio is None
        )


class BindingStatus(Wire):
    phase: Phase = "Pending"
    mode: MountMode | None = None
    ready_workers: NonNegInt = 0
    cache_capacity: NonNegInt = 0
    cache_used: NonNegInt = 0
    ufs_total: NonNegInt = 0  # the under storage's bytes (Fluid's ufsTotal); 0: not known
    hit_ratio: Ratio | None = None
    # blocks the workers' disk tiers could not keep (full, failing, at their `min_free`)
    # and blocks they evicted to keep their disk's floor free, since each worker started
    cache_not_kept: NonNegInt = 0
    cache_shed: NonNegInt = 0
    # live workers with a disk tier that keeps no block now: its disk is below the tier's
    # `min_free` even without the cache's blocks
    cache_disks_full: NonNegInt = 0
    last_error: str = ""
    observed_generation: int = 0
    hub_last_seen: float = 0.0
    reported_at: float = 0.0
    metrics: Figures = msgspec.field(default_factory=Figures)
    load: LoadStatus | None = None


class DatasetRecord(Wire):
    spec: Dataset
    generation: int = 1
    revision: int = 0
    created: float = 0.0  # unix time of the first apply


class AutoscaleDecision(Wire):
    """One change the autoscaler made to a binding's replicas, and why."""

    at: float
    current: int
    replicas: int
    reason: str


class BindingView(Wire):
    binding: Binding
    status: BindingStatus | None = None
    decisions: list[AutoscaleDecision] = []


class DatasetView(Wire):
    """A dataset as `describe` shows it: the spec, where it is placed and how each place is."""

    spec: Dataset
    generation: int
    revision: int
    bindings: list[BindingView] = []
    phase: str = "Pending"  # ... or "PartiallyBound (2/3)": Bound on 2 of its 3 clusters
    cache_used: int = 0
    cache_capacity: int = 0
    ufs_total: int = 0  # the under storage's bytes, where a cluster measured them
    created: float = 0.0


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]


class WatchEvent(Wire):
    type: EventType
    revision: int
    object: Binding | None = None
    error: str = ""  # ERROR events: "410 Gone" when the watcher fell behind compaction


class ListResult(Wire):
    revision: int
    items: list[Binding]


class Registered(Wire):
    cluster: ClusterRecord
    token: str


class ErrorBody(Wire):
    error: str
    problems: list[dict[str, str | int]] = []
