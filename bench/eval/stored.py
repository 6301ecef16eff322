"""SciFact nDCG@10 for every stored vector type (bgeort/quantize.py) next to float32, and binary search
with float rescoring of its top candidates.

    python -m bench.eval.stored MODEL [--precision int8] [--queries N] [--extra-docs N] [--out FILE]

Queries and documents are embedded once (float32, queries with the model's instruction), then stored as
each type and scored as a vector store would: float types by inner product, int8/uint8 by the inner
product of their integer values, binary/ubinary by Hamming distance. "binary + rescore" ranks the
documents by Hamming distance, takes the best RESCORE_MULTIPLIER x 10 and reorders them by the float32
query against the documents' sign vectors (+1/-1), as sentence-transformers' rescoring does.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from .data import load_scifact
from .metrics import mean_over_queries, ndcg_at_k, trec_order

RESCORE_MULTIPLIER = 4
K = 10


def signs(packed: np.ndarray, dim: int) -> np.ndarray:
    return np.unpackbits(packed.view(np.uint8), axis=-1)[:, :dim].astype(np.float32) * 2 - 1


def stored_scores(model, dtype: str, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    q, d = model.quantize(queries, dtype), model.quantize(docs, dtype)
    if dtype in ("binary", "ubinary"):
        if dtype == "binary":  # the same bits, offset by -128
            q, d = (q.astype(np.int16) + 128).astype(np.uint8), (d.astype(np.int16) + 128).astype(np.uint8)
        return signs(q, model.dim) @ signs(d, model.dim).T  # = dim - 2 x Hamming distance
    return q.astype(np.float32) @ d.astype(np.float32).T


def rescored(model, queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    doc_signs = signs(model.quantize(docs, "ubinary"), model.dim)
    hamming = signs(model.quantize(queries, "ubinary"), model.dim) @ doc_signs.T
    keep = np.argsort(-hamming, axis=1, kind="stable")[:, :RESCORE_MULTIPLIER * K]
    scores = np.full(hamming.shape, -np.inf, dtype=np.float32)
    for row, picked in enumerate(keep):
        scores[row, picked] = doc_signs[picked] @ queries[row]
    return scores


def ndcg(scores: np.ndarray, data) -> float:
    run = {}
    for row, qid in enumerate(data.query_ids):
        best = np.argsort(-scores[row], kind="stable")[:100]
        run[qid] = trec_order([data.doc_ids[i] for i in best], scores[row, best])
    return mean_over_queries(ndcg_at_k, run, data.qrels, K)


def main(argv: list[str] | None = None) -> int:
    import bgeort
    from bgeort.quantize import OUTPUT_DTYPES, stored_numpy_dtype, stored_width

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--queries", type=int, help="the first N test queries (default: all 300)")
    parser.add_argument("--extra-docs", type=int, help="their judged documents + N others (default: all 5,183)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) and a .json beside it")
    args = parser.parse_args(argv)
    data = load_scifact(queries=args.queries, extra_docs=args.extra_docs)
    model = bgeort.Embedder(args.model, precision=args.precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bgeort.TruncationWarning)
        queries, docs = model.encode_queries(data.queries), model.encode_corpus(data.docs)
    results = {dtype: ndcg(stored_scores(model, dtype, queries, docs), data) for dtype in OUTPUT_DTYPES}
    results["binary + rescore"] = ndcg(rescored(model, queries, docs), data)
    import sys

    lines = [f"Command: `python -m bench.eval.stored {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"SciFact nDCG@10, {len(data.query_ids)} queries, {len(data.doc_ids)} documents, {model!r}", "",
             "| stored type | bytes per vector | nDCG@10 | vs float32 |", "| --- | ---: | ---: | ---: |"]
    for name, value in results.items():
        dtype = name.split(" ")[0]
        size = stored_width(dtype, model.dim) * stored_numpy_dtype(dtype).itemsize
        lines.append(f"| {name} | {size} | {value:.5f} | {value / results['float32']:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps({"model": str(args.model), "ndcg@10": results,
                                                             "queries": len(data.query_ids),
                                                             "documents": len(data.doc_ids)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
