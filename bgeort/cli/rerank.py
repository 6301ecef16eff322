"""`bgeort rerank MODEL --query Q --text P1 --text P2`: score passages against a query, best first."""

from __future__ import annotations

HELP = "rerank passages given on the command line against a query and print them best first"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a reranker folder written by `make export`")
    parser.add_argument("--query", required=True)
    parser.add_argument("texts", nargs="*", metavar="PASSAGE", help="passages to score (or give --text, repeatable)")
    parser.add_argument("--text", action="append", default=[], dest="more_texts", metavar="PASSAGE")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")


def run(args) -> int:
    passages = [*args.texts, *args.more_texts]
    if not passages:
        raise SystemExit("bgeort rerank: give the passages to score, e.g. --text 'first' --text 'second'")
    return show(args.model, args.query, passages, precision=args.precision, device=args.device)


def show(model_path, query: str, passages: list[str], *, precision: str, device: str) -> int:
    from .. import Reranker

    model = Reranker(model_path, precision=precision, device=device)
    ranking = model.rerank(query, passages)
    print(model)
    print(f"query: {query}")
    for index, score in zip(ranking.indices, ranking.scores):
        print(f"{score:6.3f}  [{index}] {passages[index][:70]}")
    return 0
