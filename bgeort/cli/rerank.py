"""`bgeort rerank MODEL INPUT... -o OUTPUT`: score (query, passage) rows, or (query, candidates) rows with
--top-k, from files, resumably (bgeort/cli/job.py). Without -o, `bgeort rerank MODEL --query Q --text P1
--text P2` scores the passages given and prints them best first."""

from __future__ import annotations

import itertools
import sys
import time

import numpy as np

from . import corpus
from .job import PartialOutput

HELP = "score (query, passage) rows of files into .parquet/.jsonl (resumable), or passages given with --text"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a reranker folder written by `make export`")
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="files of rows with a query and a passage, or a query and a list of candidates")
    parser.add_argument("--query", help="the query for the passages given with --text")
    parser.add_argument("--text", action="append", default=[], dest="more_texts", metavar="PASSAGE")
    parser.add_argument("--query-field", default="query")
    parser.add_argument("--passage-field", default="passage")
    parser.add_argument("--candidates-field", default="candidates",
                        help="a field holding a list of passages to score against the row's query")
    parser.add_argument("--top-k", type=corpus.positive_int, help="keep the best K candidates of each row (rows with candidates)")
    parser.add_argument("--normalize", action="store_true", help="scores through a sigmoid, in (0, 1)")
    corpus.add_input_arguments(parser)


def run(args) -> int:
    if args.output is None:
        if args.inputs:
            raise SystemExit("bgeort rerank: INPUT files need an output: add -o OUTPUT (.parquet or .jsonl); to "
                             "score passages typed here, give --query and each passage with --text")
        if not args.more_texts or args.query is None:
            raise SystemExit("bgeort rerank: give --query and the passages to score, e.g. --text 'first' "
                             "--text 'second', or files and -o OUTPUT")
        return show(args.model, args.query, args.more_texts, precision=args.precision, device=args.device)
    if args.more_texts or args.query is not None or not args.inputs:
        raise SystemExit("bgeort rerank: with -o, give INPUT files (or - for stdin), not --query/--text")
    if corpus.formats.output_format(args.output) == ".npy":
        raise SystemExit("bgeort rerank: scores go to .parquet or .jsonl (a .npy holds one matrix)")
    if args.top_k is not None and args.top_k < 1:
        raise SystemExit(f"bgeort rerank: --top-k must be a positive integer, got {args.top_k}")
    try:
        return rerank_files(args)
    except KeyboardInterrupt:
        print(f"\nbgeort rerank: interrupted; what was written is kept in {args.output}.partial: "
              "run the same command to continue", file=sys.stderr)
        return 130


def row_pairs(record, args) -> tuple[str, list[str], bool]:
    """(query, passages, is_candidates_list) of a record, or a RowError naming the row."""
    query = corpus.field_text(record, args.query_field)
    if args.candidates_field in record.fields:
        candidates = record.fields[args.candidates_field]
        if not isinstance(candidates, list):
            raise corpus.RowError(f"{record.where}: field {args.candidates_field!r} is "
                                  f"{type(candidates).__name__}, not a list of passages")
        for index, value in enumerate(candidates):
            if not isinstance(value, str):
                raise corpus.RowError(f"{record.where}: {args.candidates_field}[{index}] is "
                                      f"{'null' if value is None else type(value).__name__}, not a string")
        return query, candidates, True
    if args.top_k is not None:
        raise corpus.RowError(f"{record.where}: --top-k needs a {args.candidates_field!r} list in each row "
                              f"(the row has {sorted(record.fields)})")
    return query, [corpus.field_text(record, args.passage_field)], False


def rerank_files(args) -> int:
    from .. import Reranker

    inputs = corpus.describe_inputs(args.inputs, args.input_format)
    model = Reranker(args.model, precision=args.precision, device=args.device, threads=args.threads,
                     max_batch_tokens=args.batch_tokens)
    options = {"query_field": args.query_field, "passage_field": args.passage_field,
               "candidates_field": args.candidates_field, "id_field": args.id_field, "top_k": args.top_k,
               "normalize": args.normalize, "max_length": args.max_length or model.max_length}
    fingerprint = {"job": "rerank", "model": corpus.model_fingerprint(model), "inputs": inputs, "options": options,
                   "output": corpus.formats.output_format(args.output)}
    partial = PartialOutput(args.output, fingerprint, overwrite=args.overwrite)
    totals = partial.state["totals"] or {"texts": 0, "tokens": 0, "truncated": 0, "rejected": 0, "seconds": 0.0}
    started, number = time.perf_counter(), partial.rows_read
    stream = itertools.islice(corpus.records(inputs, args.inputs, text_field=args.query_field), number, None)
    progress = corpus.Progress(total=corpus.total_rows(inputs, args.inputs), initial=number, quiet=args.quiet,
                               unit="rows")
    try:
        for chunk in corpus.chunks(stream, args.chunk_rows):
            pairs, owners, rejected = [], [], []
            for record in chunk:
                try:
                    query, passages, _ = row_pairs(record, args)
                    owner = (number, corpus.row_id(record, args.id_field, number))
                except corpus.RowError as exc:
                    corpus.reject(exc, record, number, on_error=args.on_error, rejected=rejected)
                else:
                    pairs += [(query, passage) for passage in passages]
                    owners += [(owner, index) for index in range(len(passages))]
                number += 1
            scores, truncated, lengths = model.score_window(pairs, normalize=args.normalize,
                                                            max_length=args.max_length)
            columns = ranked_columns(owners, scores, top_k=args.top_k)
            totals = corpus.add_totals(totals, count=len(pairs), lengths=lengths, truncated=truncated,
                                       rejected=rejected, seconds=time.perf_counter() - started)
            started = time.perf_counter()
            partial.commit(columns, rows_read=number, rejected=rejected, totals=totals)
            progress.update(len(chunk), int(lengths.sum()))
    finally:
        progress.close()
    empty = {"id": [], "candidate": np.zeros(0, dtype=np.int32), "score": np.zeros(0, dtype=np.float32),
             "rank": np.zeros(0, dtype=np.int32)}
    rejected_file = partial.assemble(order=list(empty), matrix=None, width=0, dtype=np.float32, empty=empty)
    line = (f"{totals['texts']} pairs, {totals['tokens']} tokens, {totals['truncated']} truncated, "
            f"{totals['rejected']} rejected rows, {totals['seconds']:.1f} s -> {args.output}")
    if totals["texts"] == 0 and totals["rejected"] == 0:
        print(f"bgeort rerank: the inputs hold no rows; wrote an empty {args.output}", file=sys.stderr)
    print(line + (f" (rejected rows: {rejected_file})" if rejected_file else "")
          + (" (resumed)" if partial.resumed else ""), file=sys.stderr)
    return 0


def ranked_columns(owners: list, scores: np.ndarray, *, top_k: int | None) -> dict:
    """One output row per scored pair: the input row's id, the candidate's index in its list (0 for a
    passage row), its score and its rank in its row (best first; ties keep list order), the best
    `top_k` of each row only when given."""
    ids, candidates, kept, ranks = [], [], [], []
    for owner, group in itertools.groupby(range(len(owners)), key=lambda i: owners[i][0]):
        group = list(group)
        order = sorted(range(len(group)), key=lambda j: -scores[group[j]])[:top_k]
        for rank, j in enumerate(order):
            ids.append(owner[1])
            candidates.append(owners[group[j]][1])
            kept.append(scores[group[j]])
            ranks.append(rank)
    return {"id": ids, "candidate": np.array(candidates, dtype=np.int32),
            "score": np.array(kept, dtype=np.float32), "rank": np.array(ranks, dtype=np.int32)}


def show(model_path, query: str, passages: list[str], *, precision: str, device: str) -> int:
    from .. import Reranker

    model = Reranker(model_path, precision=precision, device=device)
    ranking = model.rerank(query, passages)
    print(model)
    print(f"query: {query}")
    for index, score in zip(ranking.indices, ranking.scores):
        print(f"{score:6.3f}  [{index}] {passages[index][:70]}")
    return 0
