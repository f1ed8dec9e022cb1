"""Where the CLI finds the hub and its token: flags, then the environment, then the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidfed.cli import settings
from fluidfed.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FLUIDFED_HUB", "FLUIDFED_TOKEN", "FLUIDFED_TOKEN_FILE", "FLUIDFED_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_without_anything_the_local_hub_and_no_token() -> None:
    assert settings.resolve(None, None, None) == settings.ClientSettings(settings.DEFAULT_HUB, "")


def test_flags_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "client.toml"
    cfg.write_text('hub = "http://file:1"\ntoken = "file-token"\n')
    assert settings.resolve(None, None, str(cfg)) == settings.ClientSettings(
        "http://file:1", "file-token"
    )
    monkeypatch.setenv("FLUIDFED_HUB", "http://env:1")
    monkeypatch.setenv("FLUIDFED_TOKEN", "env-token")
    assert settings.resolve(None, None, str(cfg)) == settings.ClientSettings(
        "http://env:1", "env-token"
    )
    assert settings.resolve("http://flag:1", "flag-token", str(cfg)) == settings.ClientSettings(
        "http://flag:1", "flag-token"
    )


def test_token_files_from_the_environment_and_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").write_text("token-a\n")
    (tmp_path / "b").write_text("token-b\n")
    cfg = tmp_path / "xdg" / "fluidfed" / "client.toml"  # the default place
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'token_file = "{tmp_path / "b"}"\n')
    assert settings.resolve(None, None, None).token == "token-b"
    monkeypatch.setenv("FLUIDFED_TOKEN_FILE", str(tmp_path / "a"))
    assert settings.resolve(None, None, None).token == "token-a"
    monkeypatch.setenv("FLUIDFED_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the token file"):
        settings.resolve(None, None, None)


def test_bad_config_files_say_what_is_wrong(tmp_path: Path) -> None:
    cfg = tmp_path / "client.toml"
    cfg.write_text('hub = "x"\nhost = "y"\ntokn = "z"\n')
    with pytest.raises(ConfigError) as info:
        settings.resolve(None, None, str(cfg))
    assert [p.path for p in info.value.problems] == ["host", "tokn"]
    cfg.write_text("hub = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings.resolve(None, None, str(cfg))
    with pytest.raises(ConfigError, match="no such client config file"):
        settings.resolve(None, None, str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("hub", "says"),
    [
        ("ftp://x", "expected http(s)://HOST[:PORT], got 'ftp://x'"),
        ("not a url", "expected http(s)://HOST[:PORT]"),
        ("http://127.0.0.1:99999", "expected http(s)://HOST[:PORT]"),
        ("http://[::1", "expected http(s)://HOST[:PORT]"),
        ("http://user:pass@127.0.0.1:8470", "carries credentials"),
        # a '/' in the password ends the host part for the parser: it was printed whole
        ("https://admin:pa/ss@hub:8470", "carries credentials"),
        ("http://a:1,ftp://b", "got 'ftp://b'"),
    ],
)
def test_a_bad_hub_url_is_bad_input_said_where(
    hub: str, says: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        settings.resolve(hub, "t", None)
    (p,) = info.value.problems
    assert p.path == "--hub" and says in p.message and "pass" not in p.message
    monkeypatch.setenv("FLUIDFED_HUB", hub)
    with pytest.raises(ConfigError) as info:
        settings.resolve(None, "t", None)
    assert info.value.problems[0].path == "FLUIDFED_HUB"
    monkeypatch.delenv("FLUIDFED_HUB")
    cfg = tmp_path / "client.toml"
    cfg.write_text(f'token = "t"\nhub = "{hub}"\n')
    with pytest.raises(ConfigError) as info:
        settings.resolve(None, None, str(cfg))
    (p,) = info.value.problems
    assert (p.file, p.line, p.path) == (str(cfg), 2, "hub")


def test_client_file_values_must_be_strings_said_with_the_line(tmp_path: Path) -> None:
    cfg = tmp_path / "client.toml"
    cfg.write_text('hub = "http://h:1"\ntoken = ["x"]\n')
    with pytest.raises(ConfigError) as info:
        settings.resolve(None, None, str(cfg))
    (p,) = info.value.problems
    assert (p.line, p.path, p.message) == (2, "token", "token must be a string, got list")
