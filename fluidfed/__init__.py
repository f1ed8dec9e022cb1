"""fluidfed: federated elastic datasets across many Kubernetes clusters.

The public surface of the SDK: the hub's client, the models a script declares and reads,
and the error tree. Components (hub/, agents/, sidecar/) build on the same core.

    import fluidfed

    async with fluidfed.Client("https://hub:8470", token, ca_file="ca.crt") as hub:
        await hub.apply_dataset(fluidfed.Dataset(name="imagenet", mounts=[
            fluidfed.Mount(uri="s3://datasets/imagenet")]))
"""

from fluidfed.client import Client as Client
from fluidfed.errors import APIError as APIError
from fluidfed.errors import BadRequest as BadRequest
from fluidfed.errors import ConfigError as ConfigError
from fluidfed.errors import Conflict as Conflict
from fluidfed.errors import FluidfedError as FluidfedError
from fluidfed.errors import Forbidden as Forbidden
from fluidfed.errors import Gone as Gone
from fluidfed.errors import HubUnreachable as HubUnreachable
from fluidfed.errors import NotFound as NotFound
from fluidfed.errors import Problem as Problem
from fluidfed.errors import ServerError as ServerError
from fluidfed.errors import Unauthorized as Unauthorized
from fluidfed.models import Access as Access
from fluidfed.models import AutoscalePolicy as AutoscalePolicy
from fluidfed.models import AutoscaleTarget as AutoscaleTarget
from fluidfed.models import Binding as Binding
from fluidfed.models import BindingStatus as BindingStatus
from fluidfed.models import CacheSpec as CacheSpec
from fluidfed.models import CacheTier as CacheTier
from fluidfed.models import Capabilities as Capabilities
from fluidfed.models import Cluster as Cluster
from fluidfed.models import ClusterRecord as ClusterRecord
from fluidfed.models import Dataset as Dataset
from fluidfed.models import DatasetView as DatasetView
from fluidfed.models import KubeAccess as KubeAccess
from fluidfed.models import LabelSelector as LabelSelector
from fluidfed.models import Mount as Mount
from fluidfed.models import Placement as Placement
from fluidfed.models import WatchEvent as WatchEvent

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Access",
    "AutoscalePolicy",
    "AutoscaleTarget",
    "BadRequest",
    "Binding",
    "BindingStatus",
    "CacheSpec",
    "CacheTier",
    "Capabilities",
    "Client",
    "Cluster",
    "ClusterRecord",
    "ConfigError",
    "Conflict",
    "Dataset",
    "DatasetView",
    "FluidfedError",
    "Forbidden",
    "Gone",
    "HubUnreachable",
    "KubeAccess",
    "LabelSelector",
    "Mount",
    "NotFound",
    "Placement",
    "Problem",
    "ServerError",
    "Unauthorized",
    "WatchEvent",
]
