"""The agent's and the worker's command lines: safe defaults."""

import argparse

from agents import commands


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_a_worker_listens_on_loopback_unless_told() -> None:
    args = parse("worker", "serve", "--config", "w.json")
    assert args.host == "127.0.0.1"
    assert args.credentials == ""  # then the config's credentials_file, else it refuses
