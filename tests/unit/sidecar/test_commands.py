"""The sidecar's command line: its config checked before anything mounts."""

import argparse
from pathlib import Path

import pytest

from fluidfed.errors import ConfigError
from sidecar import commands


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_a_config_every_read_would_fail_on_is_refused_before_it_mounts(tmp_path: Path) -> None:
    """A NaN read timeout fired at once (every read EIO), a sub-path with '..' left the
    dataset: said with the file, as `fluidfed validate` says it."""
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text(
        'dataset = "d"\nread_timeout = nan\nsub_path = "../x"\n[[mounts]]\nuri = "s3://b/p"\n'
    )
    args = parse("sidecar", "mount", "--config", str(cfg), "--mountpoint", str(tmp_path / "m"))
    with pytest.raises(ConfigError) as info:
        commands.sidecar_config(args)
    got = {p.path: p for p in info.value.problems}
    assert set(got) == {"read_timeout", "sub_path"} and got["sub_path"].file == str(cfg)
    good = tmp_path / "good.toml"
    good.write_text('dataset = "d"\n[[mounts]]\nuri = "s3://b/p"\n')
    args = parse("sidecar", "mount", "--config", str(good), "--mountpoint", str(tmp_path / "m"))
    assert commands.sidecar_config(args).dataset == "d"
