"""Every name that crosses a process boundary as a string, in one place.

Labels and annotations the agent, the webhook and the demo read and write; the keys of the
ConfigMap the agent writes for sidecars and workers; the OpenTelemetry instrument and
attribute names the sidecars and workers record and the agent aggregates. A string typed
twice is a rename waiting to break silently: import it from here.
"""

from __future__ import annotations

from typing import Final

# --- Kubernetes: labels, annotations, field manager ---------------------------------------

PREFIX: Final = "fluidfed.io/"
MANAGED_BY: Final = "fluidfed.io/managed-by"  # on every object the agent owns ...
AGENT: Final = "fluidfed-agent"  # ... with this value; also the server-side apply manager
OWNED_SELECTOR: Final = f"{MANAGED_BY}={AGENT}"
DATASET_LABEL: Final = "fluidfed.io/dataset"
BINDING_LABEL: Final = "fluidfed.io/binding"
WEBHOOK_OWNER: Final = "fluidfed-webhook"  # BINDING_LABEL's value on the webhook configuration
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
CACHE_WORKER: Final = "cache-worker"  # COMPONENT_LABEL's value on the cache workers' pods
APP_NAME_LABEL: Final = "app.kubernetes.io/name"  # the agent's pods: AGENT (configs/deploy)
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"  # set by Kubernetes
# + "reader-<dataset>": a pod whose sidecar reads the dataset (the workers admit it)
READER_LABEL_PREFIX: Final = "fluidfed.io/"

# labels the hub derives for every cluster, which placement selectors may match
CLUSTER_LABEL: Final = "fluidfed.io/cluster"
KIND_LABEL: Final = "fluidfed.io/kind"
MOUNT_MODE_LABEL: Final = "fluidfed.io/mount-mode"
REGION_LABEL: Final = "topology.kubernetes.io/region"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"

# pods: asking for a dataset, and what the webhook did
INJECT_LABEL: Final = "fluidfed.io/inject"  # "true": the webhook looks at this pod
DATASETS_ANNOTATION: Final = "fluidfed.io/datasets"  # comma-separated dataset names
INJECTED_LABEL: Final = "fluidfed.io/injected"
INJECTED_ANNOTATION: Final = "fluidfed.io/injected-datasets"
MODE_ANNOTATION: Final = "fluidfed.io/sidecar-mode"

# nodes
VIRTUAL_NODE_TAINT: Final = "virtual-kubelet.io/provider"  # serverless virtual nodes
EDGE_NODE_LABEL: Final = "node-role.kubernetes.io/edge"
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"  # set by the kubelet: a node as a topology

# Fluid's API
FLUID_GROUP: Final = "data.fluid.io"
FLUID_VERSION: Final = "v1alpha1"
FLUID_API: Final = f"{FLUID_GROUP}/{FLUID_VERSION}"

# --- the keys of the ConfigMap the agent writes into each namespace of a dataset ----------

SIDECAR_CONFIG: Final = "sidecar.json"  # the FUSE sidecar's settings for that namespace
WORKER_CONFIG: Final = "worker.json"  # the cache workers' settings (home namespace)
# the key of the binding's Secrets: the keys (workers) or a reader token (sidecars)
CREDENTIALS_FILE: Final = "credentials.json"
# ... beside it, the data path's TLS: the binding's CA (every holder), the cache workers'
# serving certificate and its key (the workers' Secret only)
CA_FILE: Final = "ca.crt"
TLS_CERT_FILE: Final = "tls.crt"
TLS_KEY_FILE: Final = "tls.key"

# --- OpenTelemetry: services, instruments, attributes --------------------------------------

SIDECAR_SERVICE: Final = "fluidfed-sidecar"
WORKER_SERVICE: Final = "fluidfed-worker"
HUB_SERVICE: Final = "fluidfed-hub"

READ_BYTES: Final = "fluidfed.read.bytes"
READ_OPERATIONS: Final = "fluidfed.read.operations"
READ_DURATION: Final = "fluidfed.read.duration"
CACHE_HITS: Final = "fluidfed.cache.hits"
CACHE_MISSES: Final = "fluidfed.cache.misses"
CACHE_EVICTIONS: Final = "fluidfed.cache.evictions"
CACHE_USED: Final = "fluidfed.cache.used"
CACHE_CAPACITY: Final = "fluidfed.cache.capacity"
UFS_READ_BYTES: Final = "fluidfed.ufs.read.bytes"
UFS_ERRORS: Final = "fluidfed.ufs.errors"
HUB_REQUESTS: Final = "fluidfed.hub.requests"
HUB_WATCHES: Final = "fluidfed.hub.watches"

ATTR_DATASET: Final = "fluidfed.dataset"  # resource attributes
ATTR_CLUSTER: Final = "fluidfed.cluster"
ATTR_TIER: Final = "fluidfed.tier"  # data-point attributes
ATTR_SOURCE: Final = "fluidfed.source"  # local | worker | ufs

# --- the hub's HTTP API -------------------------------------------------------------------

# a request's idempotency key: sent again to another hub replica (its answer lost), the
# same key makes it the same request, which the hub applies once
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
