"""`fluidfed demo [--quick] [--keep]` and `fluidfed demo down`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole federation on this machine, in one command")
    p.add_argument("action", nargs="?", choices=["down"], help="down: remove a kept demo")
    p.add_argument("--quick", action="store_true", help="skip the slow steps")
    p.add_argument("--keep", action="store_true", help="leave everything running")
    p.add_argument(
        "--dir", help="work directory (env FLUIDFED_DEMO_DIR; default ~/.cache/fluidfed/demo)"
    )
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from fluidfed import demo  # loaded when asked for: daemons started by this CLI skip it

    base = Path(args.dir) if args.dir else demo.default_dir()
    if args.action == "down":
        asyncio.run(demo.stop(base))
        demo.console.print(f"demo in {base} stopped and removed")
        return 0
    asyncio.run(demo.Demo(base, quick=args.quick, keep=args.keep).run())
    return 0
