"""fluidfed: federated elastic datasets across many Kubernetes clusters.

The public surface of the shared core; components (hub/, agents/, sidecar/) build on it.
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

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "FluidfedError",
    "Forbidden",
    "Gone",
    "HubUnreachable",
    "NotFound",
    "Problem",
    "ServerError",
    "Unauthorized",
]
