"""One function per task family: a column's vectors in, MTEB's main score (x100) out."""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import metrics
from .data import ClassificationSet, RetrievalSet, StsSet

TOP_K = 1000  # MTEB keeps the top 1000 documents per query


def sts_score(column, task: StsSet) -> float:
    """Cosine Spearman x100 (MTEB STSEvaluator: sklearn paired cosine, scipy spearmanr)."""
    cosine = metrics.paired_cosine(column.embed(task.sentences1), column.embed(task.sentences2))
    return 100 * metrics.sts_spearman(task.gold, cosine)


def retrieve(column, task: RetrievalSet, *, instruction: str = "", k: int = TOP_K) -> dict[str, list[str]]:
    """Each query's top-k document ids in trec_eval order (score descending, then doc id descending)."""
    docs = column.embed(task.docs)
    queries = column.embed([instruction + query for query in task.queries])
    best, scores = metrics.top_k(queries, docs, k)
    return {qid: metrics.trec_order([task.doc_ids[i] for i in row], row_scores)
            for qid, row, row_scores in zip(task.query_ids, best, scores)}


def retrieval_scores(run: dict[str, list[str]], qrels) -> dict[str, float]:
    """nDCG@10 and recall@100 x100, each averaged over queries and rounded to 5 decimals as MTEB."""
    return {"ndcg_at_10": 100 * metrics.mean_over_queries(metrics.ndcg_at_k, run, qrels, 10),
            "recall_at_100": 100 * metrics.mean_over_queries(metrics.recall_at_k, run, qrels, 100)}


def classification_accuracy(column, task: ClassificationSet, *, experiments: int = 10,
                            samples_per_label: int = 8) -> float:
    """MTEB's logReg protocol x100: mean test accuracy over `experiments` undersampled training sets."""
    samples = metrics.experiment_samples(task.train_labels, experiments=experiments,
                                         samples_per_label=samples_per_label)
    test_x = column.embed(task.test_texts)
    scores = []
    for chosen in samples:
        train_x = column.embed([task.train_texts[i] for i in chosen])
        scores.append(metrics.logreg_accuracy(train_x, task.train_labels[chosen], test_x, task.test_labels))
    return 100 * float(np.mean(scores))


def rerank(reranker, task: RetrievalSet, run: dict[str, list[str]], *, depth: int = 100) -> dict:
    """Rescore each query's top `depth` documents of `run` with a cross-encoder: nDCG@10 before and
    after (x100), with the pairs/s and tokens the reranker spent."""
    from bgeort import TruncationWarning

    text_of = dict(zip(task.doc_ids, task.docs))
    query_of = dict(zip(task.query_ids, task.queries))
    pairs, owners = [], []
    for qid in task.query_ids:
        for doc in run[qid][:depth]:
            pairs.append((query_of[qid], text_of[doc]))
            owners.append((qid, doc))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        scores = reranker.compute_score(pairs) if pairs else np.zeros(0)
    seconds = time.perf_counter() - start
    reranked: dict[str, tuple[list[str], list[float]]] = {qid: ([], []) for qid in task.query_ids}
    for (qid, doc), score in zip(owners, scores):
        reranked[qid][0].append(doc)
        reranked[qid][1].append(float(score))
    after = {qid: metrics.trec_order(docs, s) for qid, (docs, s) in reranked.items()}
    before = {qid: run[qid][:depth] for qid in task.query_ids}
    return {
        "depth": depth,
        "ndcg_at_10_before": 100 * metrics.mean_over_queries(metrics.ndcg_at_k, before, task.qrels, 10),
        "ndcg_at_10_after": 100 * metrics.mean_over_queries(metrics.ndcg_at_k, after, task.qrels, 10),
        "pairs": len(pairs),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(len(pairs) / seconds, 1) if seconds else None,
        "truncation_warnings": len(caught),
    }


def truncated_count(embedder, texts: list[str], *, instruction: str = "") -> int:
    """How many texts the model cuts at its max length (the eval silences the warning; it counts)."""
    if not texts:
        return 0
    counts = embedder.token_counts([(instruction + text).strip() for text in texts])
    return int((counts > embedder.max_length).sum())
