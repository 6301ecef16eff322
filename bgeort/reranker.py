"""`Reranker`: (query, passage) pairs in, relevance scores out, with FlagReranker's method names."""

from __future__ import annotations

import itertools
import os
from typing import NamedTuple

import numpy as np

from .batching import batch_defaults
from .inputs import READ_AHEAD, check_texts, positive, warn_truncated
from .model import OpenModel


class Ranking(NamedTuple):
    """Documents best first: their indices in the input list and their scores."""

    indices: np.ndarray
    scores: np.ndarray


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow for large |x|."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp = np.exp(x[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


class Reranker:
    """An exported cross-encoder (bge-reranker) folder, opened for inference.

    >>> model = Reranker("models/bge-reranker-base")
    >>> model.compute_score(["what is panda?", "The giant panda is a bear."])   # one pair: a float
    >>> model.rerank("what is panda?", ["hi", "The giant panda is a bear."], top_k=1)
    """

    def __init__(self, path: str | os.PathLike, *, precision: str = "auto", device: str = "auto",
                 threads: int | None = None, batch_size: int | None = None,
                 max_batch_tokens: int | None = None, spinning: bool | str = True, verify: bool = True,
                 side_by_side: bool | None = None):
        self._model = OpenModel.open(path, kind="reranker", precision=precision, device=device,
                                     threads=threads, spinning=spinning, verify=verify,
                                     side_by_side=side_by_side)
        self.manifest = self._model.manifest
        default_size, default_tokens = batch_defaults(self._model.device)
        self.batch_size = default_size if batch_size is None else positive("batch_size", batch_size)
        self.max_batch_tokens = (default_tokens if max_batch_tokens is None
                                 else positive("max_batch_tokens", max_batch_tokens))

    path = property(lambda self: self._model.path)
    precision = property(lambda self: self._model.precision, doc="the variant that runs")
    device = property(lambda self: self._model.device)
    max_length = property(lambda self: self.manifest.max_length)

    def __repr__(self) -> str:
        return (f"Reranker({str(self.path)!r}, precision={self.precision!r}, device={self.device!r}, "
                f"max_length={self.max_length})")

    def compute_score(self, pairs, *, normalize: bool = False, batch_size: int | None = None,
                      max_length: int | None = None, sliding_window: bool = False):
        """Score [query, passage] pairs: one pair gives a float, a list of pairs float32 (N,).

        Scores are raw logits (unbounded); `normalize=True` maps them through a sigmoid to (0, 1).
        A passage that does not fit the window is truncated (with a `TruncationWarning`), as
        FlagReranker does; `sliding_window=True` scores overlapping windows over it instead and
        keeps the best.
        """
        single = _is_pair(pairs)
        items = [pairs] if single else check_pairs(pairs)
        scores = self._score(items, normalize=normalize, batch_size=batch_size, max_length=max_length,
                             sliding_window=sliding_window)
        return float(scores[0]) if single else scores

    def compute_score_iter(self, pairs, *, window: int = READ_AHEAD, normalize: bool = False, **options):
        """`compute_score` over any iterable of [query, passage] pairs: yields one float32 score per
        pair, in input order, holding at most `window` pairs at a time (each window one
        `compute_score` call, so its scores equal compute_score's on those pairs)."""
        positive("window", window)
        iterator = iter(pairs) if not _is_pair(pairs) and not isinstance(pairs, (str, bytes, dict)) else None
        if iterator is None:
            raise TypeError(f"pairs must be an iterable of [query, passage] pairs, got {type(pairs).__name__}")
        start = 0
        while chunk := list(itertools.islice(iterator, window)):
            try:
                items = check_pairs(chunk)
            except TypeError as exc:  # name the pair by its place in the whole stream
                bad = next(i for i, pair in enumerate(chunk) if not _is_pair(pair))
                raise TypeError(str(exc).replace(f"pairs[{bad}]", f"pairs[{start + bad}]", 1)) from None
            yield from self._score(items, normalize=normalize, start=start, **options)
            start += len(chunk)

    def rerank(self, query: str, documents, *, top_k: int | None = None, normalize: bool = True,
               **options) -> Ranking:
        """Documents sorted by score, best first (ties keep input order), at most `top_k` of them."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        documents = check_texts(documents, "documents")
        if top_k is not None:
            positive("top_k", top_k)
        scores = self._score([(query, document) for document in documents], normalize=normalize, **options)
        return rank(scores, top_k=top_k)

    def close(self) -> None:
        """Release the runner threads and the session; the Reranker cannot score after this."""
        self._model.close()

    def __enter__(self) -> "Reranker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _score(self, pairs: list[tuple[str, str]], *, normalize: bool, start: int = 0, **options) -> np.ndarray:
        scores, truncated, _ = self.score_window(pairs, normalize=normalize, **options)
        if truncated.any():
            max_length = options.get("max_length")
            warn_truncated(truncated, self.max_length if max_length is None else max_length, start=start)
        return scores

    def score_window(self, pairs: list[tuple[str, str]], *, normalize: bool = False, batch_size: int | None = None,
                     max_length: int | None = None,
                     sliding_window: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores of checked (query, passage) pairs, which pairs were truncated (no warning: the caller
        says it) and the tokens each ran with (all its windows): what compute_score, bgeort.aio and the
        corpus job (bgeort/cli/rerank.py) are built on."""
        if not pairs:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        length = self.max_length if max_length is None else positive("max_length", max_length)
        if length > self.max_length:
            raise ValueError(f"max_length={length} is more than this model's {self.max_length} tokens; "
                             "pass a value up to that, or None")
        size = self.batch_size if batch_size is None else positive("batch_size", batch_size)
        run = dict(batch_size=size, max_tokens=self.max_batch_tokens, reduce=lambda output, arrays: output[:, :1],
                   width=1)
        tokenizer = self._model.tokenizer
        if not sliding_window:  # one row per pair: tokenized slice by slice on a GPU (OpenModel.encode_and_run)
            logits, truncated, lengths = self._model.encode_and_run(
                pairs, lambda part: tokenizer.encode_pairs([q for q, _ in part], [p for _, p in part],
                                                           max_length=length)[0], **run)
            return (sigmoid(logits[:, 0]) if normalize else logits[:, 0]), truncated, lengths
        encoded, owners = tokenizer.encode_pairs([q for q, _ in pairs], [p for _, p in pairs], max_length=length,
                                                 windows=True)
        per_pair = np.zeros(len(pairs), dtype=bool)
        np.logical_or.at(per_pair, owners, encoded.truncated)
        lengths = np.zeros(len(pairs), dtype=np.int64)
        np.add.at(lengths, owners, encoded.lengths)
        logits = self._model.run_batches(encoded, **run)[:, 0]
        scores = np.full(len(pairs), -np.inf, dtype=np.float32)
        np.maximum.at(scores, owners, logits)  # the best of each pair's windows
        return (sigmoid(scores) if normalize else scores), per_pair, lengths


def rank(scores: np.ndarray, *, top_k: int | None = None) -> Ranking:
    """Indices and scores best first (ties keep input order), at most `top_k` of them."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return Ranking(order, scores[order])


def _is_pair(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value)


def check_pairs(pairs) -> list[tuple[str, str]]:
    """A list of (query, passage) str pairs, or a TypeError naming the first bad one."""
    if pairs is None or isinstance(pairs, (str, bytes, dict)):
        raise TypeError(f"pairs must be a [query, passage] pair or a list of them, got {type(pairs).__name__}")
    items = list(pairs)
    for index, pair in enumerate(items):
        if not _is_pair(pair):
            raise TypeError(f"pairs[{index}] is {pair!r:.80}, not a [query, passage] pair of two str")
    return [tuple(pair) for pair in items]
