"""The agent's and the worker's command lines: safe defaults."""

import argparse
import stat
from pathlib import Path

from agents import commands
from fluidfed.data import credentials


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_a_worker_listens_on_loopback_unless_told() -> None:
    args = parse("worker", "serve", "--config", "w.json")
    assert args.host == "127.0.0.1"
    assert args.credentials == ""  # then the config's credentials_file, else it refuses


def test_credentials_by_hand_are_files_of_mode_0600_that_workers_accept(tmp_path: Path) -> None:
    keys, token = tmp_path / "keys.json", tmp_path / "token.json"
    argv = ["worker", "credentials", "--keys", str(keys), "--token-out", str(token)]
    args = parse(*argv, "--dataset", "d", "--sub-path", "val")
    assert args.run(args) == 0
    for f in (keys, token):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    held = credentials.load(keys)
    claims = credentials.verify(credentials.load(token).token, held.keys)
    assert (claims.role, claims.dataset, claims.sub_path) == ("reader", "d", "val")
    assert args.run(args) == 0 and credentials.load(keys) == held  # kept, not remade
