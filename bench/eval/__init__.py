"""Quality evaluation of an exported model folder against MTEB's published numbers (issue 5).

`python -m bench.eval models/<name> [--reranker models/<reranker>]` scores each precision of the
folder, and the PyTorch reference, on the real sets in ../shared/data (STS, SciFact retrieval,
Banking77 classification, optional reranking), computing each metric the way MTEB does, and writes
bench/results/eval-<name>.md and .json with tokens/s per column beside the scores.

Modules: `data` (loaders, stdlib + numpy), `metrics` (pure numpy functions), `published` (the
published scores, as data), `columns` (what produces vectors: bgeort per precision, PyTorch),
`tasks` (one function per task family), `report` (markdown and JSON).
"""
