"""The whole error tree of fluidfed, in one place.

    FluidfedError                 root; `temporary` says whether a retry can help
    +-- ConfigError               bad user input: a file, a flag, a request body, a state
    |                             directory (a list of Problem: where + what + what to do)
    +-- APIError                  an HTTP status with a reason: raised by the hub's handlers
    |   |                         (one middleware turns it into the answer) and by the SDK
    |   |                         from the hub's answer
    |   +-- BadRequest            400/413/422: fix the input, do not retry
    |   +-- Unauthorized          401: no or unknown token
    |   +-- Forbidden             403: the token may not do this
    |   +-- NotFound              404
    |   +-- Conflict              409
    |   +-- Gone                  410: watch revision compacted, relist
    |   |   +-- Compacted         the hub's own: which revision, and the oldest kept
    |   |   +-- RevisionAhead     a revision the catalog never reached (restored from a copy)
    |   +-- ServerError           5xx: temporary, retry with backoff
    +-- HubUnreachable            connection refused, timeout: temporary
    +-- StaleRevision             a store commit raced another writer: temporary
    +-- NotLeader                 a leader-only decision by a replica that lost the lease
    (ServerError) +-- StoreError  the catalog's file damaged, read-only or full: 503
    +-- KubeError                 the Kubernetes API refused or did not answer (status 0);
    |                             temporary for 0, 429 and 5xx
    +-- DataError                 the data path
    |   +-- CorruptBlock          a block whose bytes do not match its checksum
    |   +-- NotCached             a block file not in the page cache (reading would wait)
    |   +-- UFSError              the under storage; temporary unless the store said no
    |   |   +-- UFSNotFound       no such object
    |   +-- WorkerError           a cache worker answered with an error or not at all
    |       +-- NotLocal          a worker's block file is not visible on this machine
    +-- BadExport                 an OTLP export that cannot be decoded
    +-- LocalClusterError         the dev kit's local clusters

Whether to retry is carried by the error (`temporary`), never by parsing messages. Foreign
errors (aiohttp, kubernetes-asyncio, OpenDAL, protobuf) are translated where they are
caught, with the original chained underneath.
"""

from __future__ import annotations

import errno

import msgspec

# an OSError with one of these says nothing of the file or peer it was about: the process
# or the machine is short of descriptors or memory for now. What meets one leaves the file
# or connection be and tries again later (a server stops accepting for a while, a worker
# answers 503, a sidecar asks the worker instead of opening the worker's file).
SCARCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """One thing wrong with some input, and where it is."""

    message: str
    path: str = ""  # field path, e.g. dataset.cache.tiers[1].quota
    file: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        parts = [p for p in (where, self.path) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class FluidfedError(Exception):
    """Root of every error fluidfed raises on purpose."""

    temporary: bool = False


class ConfigError(FluidfedError):
    """Input that cannot be accepted; lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def one(cls, message: str, *, file: str = "", path: str = "", line: int = 0) -> ConfigError:
        return cls([Problem(message, path=path, file=file, line=line)])


# --- HTTP statuses ----------------------------------------------------------------------


class APIError(FluidfedError):
    status: int = 500

    def __init__(
        self, reason: str, problems: list[Problem] | None = None, *, status: int = 0
    ) -> None:
        self.status = status or type(self).status
        self.reason = reason
        self.problems = problems or []
        detail = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"hub answered {self.status}: {reason}{detail}")


class BadRequest(APIError):
    status = 400

    @classmethod
    def unless_valid(cls, problems: list[Problem]) -> None:
        """Raise with every problem found, if there is any."""
        if problems:
            raise cls("the request is not valid", problems)


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class Gone(APIError):
    """The watch revision was compacted away: list again, then watch from the list's revision."""

    status = 410


class Compacted(Gone):
    def __init__(self, revision: int, compacted: int) -> None:
        super().__init__(
            f"revision {revision} is older than the oldest kept ({compacted}): list again "
            "and watch from the list's revision"
        )
        self.revision = revision
        self.compacted = compacted


class RevisionAhead(Gone):
    """A watch from a revision the catalog has not reached: the catalog was restored from an
    older copy. List again; what is no longer bound goes."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(
            f"revision {revision} is ahead of the catalog's ({current}): the catalog was "
            "restored from an older copy; list again and watch from the list's revision"
        )


class ServerError(APIError):
    temporary = True


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: BadRequest,
    422: BadRequest,
}


def api_error(status: int, reason: str, problems: list[Problem] | None = None) -> APIError:
    """The error type for an HTTP status, so callers can catch by meaning."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(reason, problems, status=status)


# --- the control plane ------------------------------------------------------------------


class HubUnreachable(FluidfedError):
    temporary = True


class StaleRevision(FluidfedError):
    """A commit computed on an older catalog than the store's (another hub replica wrote
    first): catch up to `current` and compute it again."""

    temporary = True

    def __init__(self, message: str, *, current: int = 0) -> None:
        super().__init__(message)
        self.current = current


class NotLeader(FluidfedError):
    """A decision only the leading hub replica makes, tried by one that no longer leads."""

    temporary = True


class StoreError(ServerError):
    """The catalog's store cannot be read or written (damaged, read-only, full): the hub
    answers 503 with what to do, and /readyz says not ready until a write succeeds."""

    status = 503


class KubeError(FluidfedError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = status == 0 or status >= 500 or status == 429


# --- the data path ----------------------------------------------------------------------


class DataError(FluidfedError):
    pass


class CorruptBlock(DataError):
    """A block file whose data does not match its checksum (or has no trailer)."""


class NotCached(DataError):
    """A block file is not (all) in the page cache: reading it would wait for the disk."""


class UFSError(DataError):
    def __init__(self, message: str, *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class UFSNotFound(UFSError):
    pass


class WorkerError(DataError):
    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.temporary = status == 0 or status >= 500


class NotLocal(WorkerError):
    """The worker's block file is not visible here: the worker is on another machine."""


# --- metrics and the dev kit --------------------------------------------------------------


class BadExport(FluidfedError):
    """An OTLP export that is not an ExportMetricsServiceRequest."""


class LocalClusterError(FluidfedError):
    pass
