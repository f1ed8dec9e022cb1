"""The whole error tree of fluidfed, in one place.

    FluidfedError
    +-- ConfigError               bad user input: a file, a flag, a request body
    |                             (carries a list of Problem: where + what + what to do)
    +-- APIError                  the hub answered with an error (status, reason, problems)
    |   +-- BadRequest            400/413/422: fix the input, do not retry
    |   +-- Unauthorized          401: no or unknown token
    |   +-- Forbidden             403: the token may not do this
    |   +-- NotFound              404
    |   +-- Conflict              409
    |   +-- Gone                  410: watch revision compacted, relist
    |   +-- ServerError           5xx: temporary, retry with backoff
    +-- HubUnreachable            connection refused, timeout: temporary

Whether to retry is carried by the type (`temporary`), never by parsing messages.
"""

from __future__ import annotations

import msgspec


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


class APIError(FluidfedError):
    status: int = 0

    def __init__(self, status: int, reason: str, problems: list[Problem] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.problems = problems or []
        detail = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"hub answered {status}: {reason}{detail}")


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class Forbidden(APIError):
    pass


class NotFound(APIError):
    pass


class Conflict(APIError):
    pass


class Gone(APIError):
    """The watch revision was compacted away: list again, then watch from the list's revision."""


class ServerError(APIError):
    temporary = True


class HubUnreachable(FluidfedError):
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
    return cls(status, reason, problems)
