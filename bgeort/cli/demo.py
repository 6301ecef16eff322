"""`bgeort demo MODEL`: run a model folder on a few built-in examples, whatever its kind (`make export` ends with it)."""

from __future__ import annotations

from ..manifest import load_manifest
from . import embed, rerank

HELP = "embed a few sentences (embedder) or rerank a few passages (reranker) with a model folder"

SENTENCES = ("A man is playing a guitar.", "Someone is playing an instrument.", "The stock market fell sharply today.")
QUERY = "what is a panda?"
PASSAGES = ("The giant panda is a bear species endemic to China.", "Pandas is a Python library for data analysis.",
            "The stock market fell sharply today.")


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a model folder written by `make export`")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")


def run(args) -> int:
    if load_manifest(args.model).kind == "reranker":
        return rerank.show(args.model, QUERY, list(PASSAGES), precision=args.precision, device=args.device)
    return embed.show(args.model, list(SENTENCES), precision=args.precision, device=args.device)
