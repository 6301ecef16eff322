"""`bgeort embed MODEL --text A --text B`: embed texts and print their cosine similarity matrix."""

from __future__ import annotations

import numpy as np

HELP = "embed texts given on the command line and print their cosine similarity matrix"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a model folder written by `make export`")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (or give --text, repeatable)")
    parser.add_argument("--text", action="append", default=[], dest="more_texts", metavar="TEXT")
    parser.add_argument("--queries", action="store_true", help="prepend the model's query instruction")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")


def run(args) -> int:
    texts = [*args.texts, *args.more_texts]
    if not texts:
        raise SystemExit("bgeort embed: give the texts to embed, e.g. --text 'first' --text 'second'")
    return show(args.model, texts, precision=args.precision, device=args.device, queries=args.queries)


def show(model_path, texts: list[str], *, precision: str, device: str, queries: bool = False) -> int:
    from .. import Embedder

    model = Embedder(model_path, precision=precision, device=device)
    vectors = model.encode_queries(texts) if queries else model.encode(texts)
    print(model)
    print(f"vectors: shape {vectors.shape}, dtype {vectors.dtype}, norms {np.round(np.linalg.norm(vectors, axis=1), 4)}")
    for text, row in zip(texts, vectors @ vectors.T):
        print(" ".join(f"{value:6.3f}" for value in row), " ", text[:60])
    return 0
