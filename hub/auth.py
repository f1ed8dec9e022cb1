"""Tokens: the admin token, and one token per cluster stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fluidfed import secretfile
from fluidfed.errors import ConfigError

CLUSTER_TOKEN_PREFIX = "ffc"
ADMIN_TOKEN_PREFIX = "ffa"  # a generated admin token's


@dataclass(frozen=True, slots=True)
class Admin:
    pass


@dataclass(frozen=True, slots=True)
class ClusterAgent:
    cluster: str


@dataclass(frozen=True, slots=True)
class Scraper:
    """The holder of the metrics token (`metrics_token_file`): reads /metrics, nothing else."""


Principal = Admin | ClusterAgent | Scraper


def new_cluster_token(cluster: str) -> str:
    # the cluster name travels in the token so the hub finds the one hash to compare with
    return f"{CLUSTER_TOKEN_PREFIX}.{cluster}.{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    # tokens carry 256 random bits: a fast hash is enough, no password KDF needed
    # (a header's bytes that are not UTF-8 come as surrogates: a token matching none, not
    # an error)
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def cluster_of(token: str) -> str | None:
    parts = token.split(".", 2)
    if len(parts) == 3 and parts[0] == CLUSTER_TOKEN_PREFIX:
        return parts[1]
    return None


def same_token(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token).encode(), stored_hash.encode())


def load_admin_token(token_file: str, token_env: str, data_dir: Path) -> tuple[str, str]:
    """The admin token and where it came from; generated into the data dir if none is given."""
    if token_file:
        todo = "write the token there or drop admin_token_file to have one generated"
        token = _token_file(token_file, "admin", "hub.admin_token_file", 1, todo)
        return token, f"file {token_file}"
    if token_env and os.environ.get(token_env, "").strip():
        return os.environ[token_env].strip(), f"environment variable {token_env}"
    path = data_dir / "admin-token"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip(), f"file {path}"
    # a prefix, as cluster tokens have: one starting with '-' read as a flag (`--token -x`)
    token = f"{ADMIN_TOKEN_PREFIX}.{secrets.token_urlsafe(32)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    secretfile.write(path, token + "\n")
    return token, f"file {path} (generated)"


def load_metrics_token(token_file: str) -> str:
    """The token that reads /metrics alone (a Prometheus scrape's), from `token_file`; ""
    if none is set (then /metrics takes the admin token or a cluster's)."""
    if not token_file:
        return ""
    todo = (
        "write a token of 16 characters or more there (e.g. `openssl rand -hex 32`), or drop "
        "metrics_token_file to read /metrics with the admin token"
    )
    return _token_file(token_file, "metrics", "hub.metrics_token_file", 16, todo)


def _token_file(token_file: str, what: str, field: str, least: int, todo: str) -> str:
    """The token in `token_file` (at least `least` characters); ConfigError naming the
    file and `field`, with `todo`, where it cannot be read or holds none."""
    path = Path(token_file)
    try:
        token = path.read_text().strip()
    except OSError as err:
        problem = f"cannot read the {what} token file ({err.strerror})"
    else:
        if len(token) >= least:
            return token
        held = f"holds {len(token)} characters" if token else "is empty"
        problem = f"the {what} token file {held}"
    raise ConfigError.one(f"{problem}; {todo}", file=str(path), path=field)
