"""The metrics, computed as MTEB 1.12 computes them (see ../shared/data/README.md section 4).

Pure functions on numpy arrays (and scipy's spearmanr, as MTEB calls it); no model in here.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sklearn's `1 - paired_cosine_distances(a, b)` in float64: normalise, then 1 - 0.5*||â - b̂||².

    Not a dot product: identical sentences must score exactly 1.0 and tie (STS12 has 79 such
    pairs; a dot product breaks the ties with rounding noise and moves Spearman by up to 3.5e-5).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - 0.5 * np.sum((a - b) ** 2, axis=1)


def sts_spearman(gold: np.ndarray, scores: np.ndarray) -> float:
    """`scipy.stats.spearmanr(gold, scores)[0]` (average ranks for ties), as MTEB's STSEvaluator."""
    from scipy.stats import spearmanr

    return float(spearmanr(gold, scores)[0])


def top_k(query_vectors: np.ndarray, doc_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores (float32, as MTEB's torch cos_sim) of each query's k best documents."""
    q = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True)
    d = doc_vectors / np.linalg.norm(doc_vectors, axis=1, keepdims=True)
    scores = (q.astype(np.float32) @ d.astype(np.float32).T)
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(scores, best, axis=1)
    return best, best_scores


def trec_order(doc_ids: list[str], scores) -> list[str]:
    """A run's documents as trec_eval ranks them: score descending, ties by doc id descending."""
    pairs = sorted(zip(doc_ids, (float(s) for s in scores)), key=lambda p: p[0], reverse=True)
    pairs.sort(key=lambda p: p[1], reverse=True)  # stable: equal scores keep doc id descending
    return [doc for doc, _ in pairs]


def ndcg_at_k(ranked: list[str], judgments: dict[str, int], k: int) -> float:
    """pytrec_eval `ndcg_cut.k` for one query: gain = relevance, discount log2(rank + 1), the ideal
    ranking from all judged relevances of the query."""
    gains = [max(judgments.get(doc, 0), 0) for doc in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((r for r in judgments.values() if r > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked: list[str], judgments: dict[str, int], k: int) -> float:
    """pytrec_eval `recall.k`: relevant (relevance > 0) documents in the top k / all relevant."""
    relevant = {doc for doc, r in judgments.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mean_over_queries(metric, run: dict[str, list[str]], qrels: dict[str, dict[str, int]], k: int) -> float:
    """Mean over the queries in both run and qrels (as pytrec_eval), then MTEB's round(x, 5)."""
    queries = [q for q in qrels if q in run]
    return round(float(np.mean([metric(run[q], qrels[q], k) for q in queries])), 5)


def undersample_indices(labels: np.ndarray, samples_per_label: int, idxs: np.ndarray | None,
                        seed: int = 42) -> tuple[list[int], np.ndarray]:
    """MTEB's `_undersample_data`: shuffle `idxs` in place with a freshly seeded RNG (every
    evaluator reseeds numpy's global RNG with 42, so each experiment's shuffle starts from seed 42,
    applied to the previous experiment's order), then keep the first `samples_per_label` of each label."""
    if idxs is None:
        idxs = np.arange(len(labels))
    np.random.RandomState(seed).shuffle(idxs)
    counts: dict = defaultdict(int)
    chosen = []
    for i in idxs:
        if counts[labels[i]] < samples_per_label:
            chosen.append(int(i))
            counts[labels[i]] += 1
    return chosen, idxs


def experiment_samples(labels: np.ndarray, *, experiments: int = 10, samples_per_label: int = 8) -> list[list[int]]:
    """The training indices of each of MTEB's `n_experiments` runs (idxs carried from run to run)."""
    samples, idxs = [], None
    for _ in range(experiments):
        chosen, idxs = undersample_indices(labels, samples_per_label, idxs)
        samples.append(chosen)
    return samples


def logreg_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                    *, seed: int = 42, max_iter: int = 100) -> float:
    """MTEB's logRegClassificationEvaluator: LogisticRegression(random_state=42, max_iter=100)."""
    import warnings

    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ImportError("Banking77 needs scikit-learn (MTEB's classifier): pip install -e '.[eval]'") from None

    classifier = LogisticRegression(random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=100 is MTEB's, not ours to raise
        classifier.fit(train_x, train_y)
    return float(np.mean(classifier.predict(test_x) == test_y))
