"""Tokens: a cluster's token names its cluster and is kept only as a hash; the admin
token comes from a file, the environment, or is generated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidfed.errors import ConfigError
from hub import auth


def test_a_cluster_token_names_its_cluster_and_matches_only_its_hash() -> None:
    token = auth.new_cluster_token("edge-1")
    assert token.startswith("ffc.edge-1.")
    assert auth.cluster_of(token) == "edge-1"
    stored = auth.token_hash(token)
    assert token not in stored and len(stored) == 64
    assert auth.same_token(token, stored)
    assert not auth.same_token(token + "x", stored)
    assert auth.new_cluster_token("edge-1") != token


@pytest.mark.parametrize("token", ["", "ffc", "ffc.edge", "abc.edge.secret", "admin-token"])
def test_other_tokens_name_no_cluster(token: str) -> None:
    assert auth.cluster_of(token) is None


def test_the_admin_token_comes_from_a_file_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "token"
    f.write_text("from-file\n")
    monkeypatch.setenv("ADMIN", " from-env ")
    assert auth.load_admin_token(str(f), "ADMIN", tmp_path / "data") == ("from-file", f"file {f}")
    assert auth.load_admin_token("", "ADMIN", tmp_path / "data") == (
        "from-env",
        "environment variable ADMIN",
    )
    f.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        auth.load_admin_token(str(f), "ADMIN", tmp_path / "data")


def test_without_one_the_admin_token_is_generated_private_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ADMIN", raising=False)
    data = tmp_path / "data"
    token, source = auth.load_admin_token("", "ADMIN", data)
    path = data / "admin-token"
    assert source == f"file {path} (generated)"
    assert len(token) >= 32 and path.read_text() == token + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.load_admin_token("", "ADMIN", data) == (token, f"file {path}")  # a restart keeps it


def test_a_generated_admin_token_is_owner_only_even_in_a_loose_empty_file(tmp_path: Path) -> None:
    (tmp_path / "admin-token").touch(mode=0o644)
    (tmp_path / "admin-token").chmod(0o644)
    token, where = auth.load_admin_token("", "", tmp_path)
    assert where.endswith("(generated)") and token
    assert oct((tmp_path / "admin-token").stat().st_mode & 0o777) == "0o600"


def test_generated_tokens_never_start_like_a_flag(tmp_path: Path) -> None:
    # `--token -abc...` is read as another flag: a token may not start with '-'
    for i in range(64):
        token, _ = auth.load_admin_token("", "", tmp_path / str(i))
        assert token.startswith("ffa.")
    assert auth.new_cluster_token("edge").startswith("ffc.edge.")


def test_the_metrics_token_comes_from_its_file_and_is_a_real_token(tmp_path: Path) -> None:
    """None set: /metrics takes the admin's or a cluster's token; a file that cannot be
    read, is empty or holds a short token stops the hub, naming the file and the field."""
    assert auth.load_metrics_token("") == ""
    good = tmp_path / "metrics-token"
    good.write_text("m" * 32 + "\n")
    assert auth.load_metrics_token(str(good)) == "m" * 32
    short, empty = tmp_path / "short", tmp_path / "empty"
    short.write_text("abc\n")
    empty.write_text("\n")
    for f, says in (
        (tmp_path / "missing", "cannot read the metrics token file"),
        (empty, "the metrics token file is empty"),
        (short, "the metrics token file holds 3 characters"),
    ):
        with pytest.raises(ConfigError) as info:
            auth.load_metrics_token(str(f))
        (p,) = info.value.problems
        assert says in p.message and p.path == "hub.metrics_token_file" and p.file == str(f)


def test_a_token_of_other_than_utf8_bytes_matches_nothing_and_raises_nothing() -> None:
    """aiohttp gives a header's bytes that are not UTF-8 as surrogates: the hub answered
    500, with a traceback, to `Authorization: Bearer \\xff\\xfe` on every guarded route."""
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
    assert not auth.same_token(odd, auth.token_hash("ffa.real"))
    assert auth.cluster_of(odd) is None
