"""`bgeort info MODEL`: print a model folder's manifest."""

from __future__ import annotations

import json

from ..manifest import load_manifest

HELP = "print a model folder's manifest"


def add_arguments(parser) -> None:
    parser.add_argument("model")


def run(args) -> int:
    print(json.dumps(load_manifest(args.model).to_dict(), indent=2, ensure_ascii=False))
    return 0
