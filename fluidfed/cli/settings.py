"""Where the CLI finds the hub and its token: flags, then environment, then a config file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomli

from fluidfed import config
from fluidfed.errors import ConfigError, Problem
from fluidfed.validation import hub_url_problem

DEFAULT_HUB = "http://127.0.0.1:8470"
_KEYS = {"hub", "token", "token_file", "ca_file"}


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fluidfed" / "client.toml"


@dataclass(frozen=True)
class ClientSettings:
    hub: str
    token: str
    ca_file: str = ""  # the CA that signed the hub's certificate; "": the system's roots


def resolve(
    hub: str | None, token: str | None, config_file: str | None, ca_file: str | None = None
) -> ClientSettings:
    path = Path(config_file or os.environ.get("FLUIDFED_CONFIG") or default_config_path())
    file_values: dict[str, str] = {}
    if path.exists():
        try:
            raw = tomli.loads(path.read_text())
        except (tomli.TOMLDecodeError, RecursionError) as err:
            raise ConfigError([Problem(f"not valid TOML: {err}", file=str(path))]) from None
        unknown = set(raw) - _KEYS
        if unknown:
            raise ConfigError(
                [
                    Problem(
                        f"unknown key {k!r}: expected hub, token, token_file or ca_file",
                        file=str(path),
                        path=k,
                    )
                    for k in sorted(unknown)
                ]
            )
        lines = config.toml_lines(path.read_text())
        wrong = [k for k, v in raw.items() if not isinstance(v, str)]
        if wrong:
            raise ConfigError(
                [
                    Problem(
                        f"{k} must be a string, got {type(raw[k]).__name__}",
                        file=str(path),
                        line=config.locate(lines, k),
                        path=k,
                    )
                    for k in wrong
                ]
            )
        file_values = dict(raw)
    elif config_file:
        raise ConfigError([Problem("no such client config file", file=str(path))])

    def token_from_file(p: str) -> str:
        try:
            return Path(p).read_text().strip()
        except OSError as err:
            raise ConfigError([Problem(f"cannot read the token file: {err}", file=p)]) from None

    resolved_token = (
        token
        or os.environ.get("FLUIDFED_TOKEN")
        or (
            token_from_file(os.environ["FLUIDFED_TOKEN_FILE"])
            if os.environ.get("FLUIDFED_TOKEN_FILE")
            else ""
        )
        or file_values.get("token")
        or (token_from_file(file_values["token_file"]) if file_values.get("token_file") else "")
    )
    resolved_hub = hub or os.environ.get("FLUIDFED_HUB") or file_values.get("hub") or DEFAULT_HUB
    if bad := hub_url_problem(resolved_hub):
        if hub:
            raise ConfigError([Problem(bad, path="--hub")])
        if os.environ.get("FLUIDFED_HUB"):
            raise ConfigError([Problem(bad, path="FLUIDFED_HUB")])
        line = config.locate(config.toml_lines(path.read_text()), "hub")
        raise ConfigError([Problem(bad, file=str(path), line=line, path="hub")])
    resolved_ca = ca_file or os.environ.get("FLUIDFED_CA_FILE") or file_values.get("ca_file") or ""
    return ClientSettings(hub=resolved_hub, token=resolved_token, ca_file=resolved_ca)
