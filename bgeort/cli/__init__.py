"""The command line: `bgeort COMMAND ...` (also `python -m bgeort`). It dispatches; the library computes.

Each command is a module here with `HELP`, `add_arguments(parser)` and `run(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import BgeortError

COMMANDS = ("embed", "rerank", "demo", "info", "doctor", "serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bgeort", description="BGE embedders and rerankers on ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"bgeort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        module.add_arguments(commands.add_parser(name, help=module.HELP, description=module.HELP))
        modules[name] = module
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except BgeortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
