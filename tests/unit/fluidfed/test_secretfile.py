"""Secret files: 0600 from the first byte whatever was there, whole or not at all."""

import os
import stat
from pathlib import Path

import pytest

from fluidfed import secretfile


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_loose_file_that_was_there_is_replaced_owner_only(tmp_path: Path) -> None:
    p = tmp_path / "token"
    p.write_text("old\n")
    p.chmod(0o644)
    secretfile.write(p, "new\n")
    assert p.read_text() == "new\n" and mode(p) == 0o600
    secretfile.write(tmp_path / "fresh", b"k", durable=True)
    assert mode(tmp_path / "fresh") == 0o600
    assert sorted(os.listdir(tmp_path)) == ["fresh", "token"]  # no temporary file left


def test_a_failed_write_keeps_the_old_secret_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "token"
    secretfile.write(p, "old\n")
    with pytest.raises(TypeError):
        secretfile.write(p, 42)  # type: ignore[arg-type]
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["token"]


def test_why_a_destination_cannot_take_a_secret(tmp_path: Path) -> None:
    assert secretfile.unwritable(tmp_path / "t") == ""
    assert secretfile.unwritable(tmp_path) == f"{tmp_path} is a directory"
    assert "does not exist" in secretfile.unwritable(tmp_path / "no" / "t")


def test_a_symlinked_secret_is_written_where_the_link_points(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "token").write_text("old\n")
    link = tmp_path / "token"
    link.symlink_to(real / "token")
    secretfile.write(link, "new\n")
    assert link.is_symlink() and (real / "token").read_text() == "new\n"
    assert mode(real / "token") == 0o600
