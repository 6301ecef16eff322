"""Command line: `python -m bgeort embed MODEL TEXT...` and `python -m bgeort info MODEL`."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import Embedder, __version__, load_manifest
from .errors import BgeortError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bgeort", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bgeort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed texts and print their cosine similarity matrix")
    embed.add_argument("model", help="a model folder written by `make export`")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--precision", default="auto")
    embed.add_argument("--device", default="auto")
    info = commands.add_parser("info", help="print a model folder's manifest")
    info.add_argument("model")
    doctor = commands.add_parser("doctor", help="onnxruntime build, providers, CUDA libraries, CPU features")
    doctor.add_argument("model", nargs="?", help="also say which variant each device would run")
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            from .doctor import report

            print("\n".join(report(args.model)))
            return 0
        if args.command == "info":
            print(json.dumps(load_manifest(args.model).to_dict(), indent=2, ensure_ascii=False))
            return 0
        model = Embedder(args.model, precision=args.precision, device=args.device)
        vectors = model.encode(args.texts)
    except BgeortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(model)
    print(f"vectors: shape {vectors.shape}, dtype {vectors.dtype}, norms {np.round(np.linalg.norm(vectors, axis=1), 4)}")
    similarity = vectors @ vectors.T
    for text, row in zip(args.texts, similarity):
        print(" ".join(f"{value:6.3f}" for value in row), " ", text[:60])
    return 0


if __name__ == "__main__":
    sys.exit(main())
