"""`fluidfed`: the command line. Thin: parse, call the SDK, render, map errors to exit codes.

Exit codes: 0 ok; 1 the hub failed or could not be reached; 2 bad input (files, flags,
or a request the hub refused as invalid, unauthorised or unknown).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import signal
import sys
from importlib.metadata import entry_points

from fluidfed import logs
from fluidfed.cli import commands, output
from fluidfed.errors import APIError, ConfigError, FluidfedError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluidfed",
        description="Federated elastic datasets across many Kubernetes clusters.",
    )
    parser.add_argument("--hub", help="hub URL (env FLUIDFED_HUB; default http://127.0.0.1:8470)")
    parser.add_argument("--token", help="API token (env FLUIDFED_TOKEN or FLUIDFED_TOKEN_FILE)")
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="CA (PEM) that signed the hub's certificate (env FLUIDFED_CA_FILE; default: the "
        "system's trust store); the hub's certificate is always verified",
    )
    parser.add_argument(
        "--client-config", help="client TOML (env FLUIDFED_CONFIG; ~/.config/fluidfed/client.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    # components add their own commands (`fluidfed hub serve`, ...) by entry point
    for ep in sorted(entry_points(group="fluidfed.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as err:
            # a package left out of this install (the dev kit is not in the image): its
            # commands are absent, the others work
            if err.name and ep.value.split(":")[0].startswith(err.name.split(".")[0]):
                continue
            raise
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack: how a stuck daemon is looked into
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    logs.guard_server_logs()  # (every daemon's servers: no credential in their logs)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except ConfigError as err:
        for p in err.problems:
            output.err_console.print(f"[red]error:[/red] {output.safe(p)}")
        return EXIT_BAD_INPUT
    except APIError as err:
        output.err_console.print(f"[red]error:[/red] {output.safe(err.reason)}")
        for p in err.problems:
            output.err_console.print(f"  {output.safe(p)}")
        return EXIT_BAD_INPUT if 400 <= err.status < 500 else EXIT_FAILURE
    except FluidfedError as err:
        output.err_console.print(f"[red]error:[/red] {output.safe(err)}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        # what the machine refused (a port in use, a file where a directory should be, a
        # permission): said as such, not as a traceback
        where = f" ({err.filename})" if err.filename else ""
        output.err_console.print(
            f"error: {err.strerror or err}{where}", markup=False, highlight=False
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
