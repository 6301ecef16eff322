"""`M3Embedder`: bge-m3's dense, sparse (lexical weights) and ColBERT outputs from one ONNX run, with
FlagEmbedding's BGEM3FlagModel method names.

The graph (export/m3.py) gives the first token's state, a weight per token and a ColBERT vector per
token after the first; here the lexical weights are gathered per token id (max over repeats, special
tokens and weights <= 0 dropped) and the vectors normalized, as FlagEmbedding's inference code does.
"""

from __future__ import annotations

import os

import numpy as np

from .embedder import Embedder
from .errors import ModelFolderError
from .inputs import check_texts, positive, warn_truncated
from .manifest import rebuild_hint
from .pooling import l2_normalize

SCORE_MODES = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


class M3Embedder:
    """An exported bge-m3 folder, opened for all three of its outputs.

    >>> model = M3Embedder("models/bge-m3")
    >>> out = model.encode(["what is a panda?"], return_sparse=True, return_colbert_vecs=True)
    >>> out["dense_vecs"].shape, out["lexical_weights"][0], out["colbert_vecs"][0].shape
    """

    def __init__(self, path: str | os.PathLike, *, precision: str = "auto", device: str = "auto",
                 threads: int | None = None, batch_size: int | None = None, max_batch_tokens: int | None = None,
                 spinning: bool | str = True, verify: bool = True, side_by_side: bool | None = None):
        """Open the bge-m3 folder at `path`; the options are `Embedder`'s (dense vectors come from it)."""
        self._attach(Embedder(path, precision=precision, device=device, threads=threads, batch_size=batch_size,
                              max_batch_tokens=max_batch_tokens, spinning=spinning, verify=verify,
                              side_by_side=side_by_side), owned=True)

    @classmethod
    def around(cls, embedder: Embedder) -> "M3Embedder":
        """An M3Embedder on an open `Embedder` of a bge-m3 folder, sharing its session (the server's
        sparse output runs this way). Closing either closes both."""
        self = cls.__new__(cls)
        self._attach(embedder, owned=False)
        return self

    def _attach(self, embedder: Embedder, *, owned: bool) -> None:
        path = embedder.path
        self.embedder = embedder
        self.manifest = self.embedder.manifest
        if self.manifest.m3 is None:
            if owned:
                self.embedder.close()
            raise ModelFolderError(
                f"{path} has no sparse or ColBERT outputs (its bgeort.json has no 'm3' entry): it is a dense "
                "embedder; open it with bgeort.Embedder, or export bge-m3 with: make export SOURCE=BAAI/bge-m3")
        self._model = self.embedder._model
        self._unused = np.asarray(self.manifest.m3["unused_token_ids"], dtype=np.int64)
        missing = [name for name in (self.manifest.m3["sparse_output"], self.manifest.m3["colbert_output"])
                   if name not in {o.name for o in self._model.session.get_outputs()}]
        if missing:
            if owned:
                self.embedder.close()
            raise ModelFolderError(f"{self._model.file} lacks the outputs {missing} that bgeort.json names. Rebuild "
                                   f"the folder with: {rebuild_hint(path, self.manifest.provenance.get('source'))}")

    path = property(lambda self: self.embedder.path)
    precision = property(lambda self: self.embedder.precision, doc="The variant that runs.")
    device = property(lambda self: self.embedder.device)
    dim = property(lambda self: self.embedder.dim, doc="The dense vectors' width.")
    max_length = property(lambda self: self.embedder.max_length)

    @property
    def colbert_dim(self) -> int:
        return self.manifest.m3["colbert_dim"]

    def __repr__(self) -> str:
        return (f"M3Embedder({str(self.path)!r}, precision={self.precision!r}, device={self.device!r}, "
                f"dim={self.dim}, colbert_dim={self.colbert_dim}, max_length={self.max_length})")

    def encode(self, sentences, *, batch_size: int | None = None, max_length: int | None = None,
               return_dense: bool = True, return_sparse: bool = False, return_colbert_vecs: bool = False) -> dict:
        """Encode texts into any of bge-m3's three outputs, computed in one run per batch.

        Returns {"dense_vecs": (N, dim) float32 L2-normalized, "lexical_weights": [{str(token_id):
        weight}], "colbert_vecs": [(n_i - 1, colbert_dim) float32, normalized]}, None for an output not
        asked for; with sparse output also "sparse_indices"/"sparse_values" (per text, int64 ids in
        ascending order and their float32 weights: Qdrant's and Milvus's sparse vectors). A single
        str gives that text's values instead of lists. Only what is asked is copied out and processed.
        """
        single = isinstance(sentences, str)
        items = [sentences] if single else check_texts(sentences, "sentences")
        length = self.embedder._resolve_max_length(max_length)
        out, truncated, _ = self.embed_window(items, batch_size=batch_size, max_length=length,
                                              dense=bool(return_dense), sparse=bool(return_sparse),
                                              colbert=bool(return_colbert_vecs))
        if truncated.any():
            warn_truncated(truncated, length)
        if single:
            out = {key: (None if value is None else value[0]) for key, value in out.items()}
        return out

    def encode_queries(self, queries, **options) -> dict:
        """`encode` with the manifest's query instruction (bge-m3: none)."""
        return self._with_instruction(queries, self.manifest.query_instruction, options)

    def encode_corpus(self, corpus, **options) -> dict:
        """`encode` for passages (the manifest's passage instruction, bge-m3: none)."""
        return self._with_instruction(corpus, self.manifest.passage_instruction, options)

    def _with_instruction(self, texts, instruction: str, options: dict) -> dict:
        if not instruction:
            return self.encode(texts, **options)
        if isinstance(texts, str):
            return self.encode(instruction + texts, **options)
        return self.encode([instruction + text for text in check_texts(texts)], **options)

    def embed_window(self, items: list[str], *, batch_size: int | None = None, max_length: int | None = None,
                     dense: bool = True, sparse: bool = False, colbert: bool = False,
                     normalize: bool | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
        """`encode`'s dict for `items` (checked str), which were truncated and how many tokens each ran
        as, without warnings: what `encode` and the server's sparse output are built on."""
        result = {"dense_vecs": None, "lexical_weights": None, "colbert_vecs": None}
        if sparse:
            result.update(sparse_indices=None, sparse_values=None)
        normalize = self.embedder.normalize_embeddings if normalize is None else normalize
        if not (sparse or colbert):  # dense alone: the Embedder's path (no per-token output is copied)
            vectors, truncated, lengths = self.embedder.embed_window(items, batch_size=batch_size,
                                                                     max_length=max_length, normalize=normalize)
            if dense:
                result["dense_vecs"] = vectors
            return result, truncated, lengths
        length = self.embedder._resolve_max_length(max_length)
        encoded = self._model.tokenizer.encode(items, max_length=length)
        m3 = self.manifest.m3
        names = [name for name, wanted in ((self._model.output_name, dense), (m3["sparse_output"], sparse),
                                           (m3["colbert_output"], colbert)) if wanted]
        count = len(items)
        vectors = np.empty((count, self.dim), dtype=np.float32) if dense else None
        weights = [None] * count if sparse else None
        multi = [None] * count if colbert else None

        def collect(indices: np.ndarray, results: list, arrays: dict) -> None:
            found = dict(zip(names, results))
            lengths = arrays["attention_mask"].sum(axis=1)
            if dense:
                vectors[indices] = found[self._model.output_name]
            for row, index in enumerate(indices):
                n = int(lengths[row])
                if sparse:
                    weights[index] = token_weights(arrays["input_ids"][row, :n], found[m3["sparse_output"]][row, :n],
                                                   self._unused)
                if colbert:
                    multi[index] = l2_normalize(np.array(found[m3["colbert_output"]][row, :max(n - 1, 0)],
                                                         dtype=np.float32))

        if count:
            self._model.run_each(encoded, batch_size=self.embedder.batch_size if batch_size is None
                                 else positive("batch_size", batch_size),
                                 max_tokens=self.embedder.max_batch_tokens, outputs=tuple(names), collect=collect)
        if dense:
            result["dense_vecs"] = l2_normalize(vectors) if normalize else vectors
        if sparse:
            result["sparse_indices"] = [ids for ids, _ in weights]
            result["sparse_values"] = [values for _, values in weights]
            result["lexical_weights"] = [dict(zip(map(str, ids.tolist()), values.tolist())) for ids, values in weights]
        if colbert:
            result["colbert_vecs"] = multi
        return result, encoded.truncated, encoded.lengths

    def compute_lexical_matching_score(self, lexical_weights_1, lexical_weights_2):
        """Σ over shared token ids of w1 * w2: one dict with one dict gives a float, two lists of dicts
        the (len1, len2) matrix."""
        if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
            return lexical_score(lexical_weights_1, lexical_weights_2)
        if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
            return np.array([[lexical_score(a, b) for b in lexical_weights_2] for a in lexical_weights_1],
                            dtype=np.float64).reshape(len(lexical_weights_1), len(lexical_weights_2))
        raise TypeError("compute_lexical_matching_score takes two dicts or two lists of dicts (encode's "
                        f"'lexical_weights'), got {type(lexical_weights_1).__name__} and "
                        f"{type(lexical_weights_2).__name__}")

    def colbert_score(self, q_reps: np.ndarray, p_reps: np.ndarray) -> float:
        """Mean over the query's vectors of the best dot product with the passage's vectors."""
        return colbert_score(q_reps, p_reps)

    def compute_score(self, sentence_pairs, *, batch_size: int | None = None, max_query_length: int | None = None,
                      max_passage_length: int | None = None, weights_for_different_modes=None) -> dict:
        """Scores of (query, passage) pairs by each output and their weighted sums, as FlagEmbedding's
        compute_score: {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}, each a
        list of floats (floats for a single pair). Weights [w_dense, w_sparse, w_colbert], default [1, 1, 1]."""
        weights = _mode_weights(weights_for_different_modes)
        single = isinstance(sentence_pairs, (tuple, list)) and len(sentence_pairs) == 2 and all(
            isinstance(part, str) for part in sentence_pairs)  # one (query, passage) pair, as FlagEmbedding takes it
        pairs = [tuple(sentence_pairs)] if single else _check_pairs(sentence_pairs)
        everything = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True, batch_size=batch_size)
        queries = self.encode_queries([q for q, _ in pairs], max_length=max_query_length, **everything)
        passages = self.encode_corpus([p for _, p in pairs], max_length=max_passage_length, **everything)
        scores = {mode: [] for mode in SCORE_MODES}
        w_dense, w_sparse, w_colbert = weights
        for i in range(len(pairs)):
            dense = float(np.dot(queries["dense_vecs"][i].astype(np.float64), passages["dense_vecs"][i]))
            sparse = lexical_score(queries["lexical_weights"][i], passages["lexical_weights"][i])
            colbert = colbert_score(queries["colbert_vecs"][i], passages["colbert_vecs"][i])
            scores["dense"].append(dense)
            scores["sparse"].append(sparse)
            scores["colbert"].append(colbert)
            scores["sparse+dense"].append((w_sparse * sparse + w_dense * dense) / (w_dense + w_sparse)
                                          if w_dense + w_sparse else 0.0)
            scores["colbert+sparse+dense"].append((w_dense * dense + w_sparse * sparse + w_colbert * colbert)
                                                  / (w_dense + w_sparse + w_colbert))
        return {mode: values[0] for mode, values in scores.items()} if single else scores

    def convert_id_to_token(self, lexical_weights):
        """Lexical weights keyed by token text instead of id (a dict gives a dict, a list a list)."""
        single = isinstance(lexical_weights, dict)
        items = [lexical_weights] if single else list(lexical_weights)
        tokenizer = self._model.tokenizer
        converted = [{tokenizer.decode_id(int(key)): weight for key, weight in item.items()} for item in items]
        return converted[0] if single else converted

    def token_counts(self, texts) -> np.ndarray:
        return self.embedder.token_counts(texts)

    def close(self) -> None:
        self.embedder.close()

    def __enter__(self) -> "M3Embedder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def token_weights(ids: np.ndarray, weights: np.ndarray, unused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, float32 weights) of one text: the max over each id's tokens, without the unused
    (special) ids and weights <= 0."""
    keep = (weights > 0) & ~np.isin(ids, unused)
    ids, weights = ids[keep], weights[keep].astype(np.float32)
    unique, where = np.unique(ids, return_inverse=True)
    best = np.zeros(len(unique), dtype=np.float32)
    np.maximum.at(best, where, weights)
    return unique.astype(np.int64), best


def lexical_score(a: dict, b: dict) -> float:
    if len(b) < len(a):
        a, b = b, a
    return float(sum(weight * b[key] for key, weight in a.items() if key in b))


def colbert_score(q_reps: np.ndarray, p_reps: np.ndarray) -> float:
    q, p = np.asarray(q_reps, dtype=np.float32), np.asarray(p_reps, dtype=np.float32)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"colbert_score takes two (tokens, dim) arrays of one width, got {q.shape} and {p.shape}")
    if not len(q) or not len(p):
        return 0.0
    return float((q @ p.T).max(axis=1).sum() / len(q))


def _mode_weights(weights) -> tuple[float, float, float]:
    if weights is None:
        return 1.0, 1.0, 1.0
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise TypeError(f"weights_for_different_modes must be three numbers [dense, sparse, colbert], got "
                        f"{weights!r}") from None
    if len(values) != 3 or any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"weights_for_different_modes must be three finite numbers >= 0 [dense, sparse, "
                         f"colbert] with a positive sum, got {list(weights)!r}")
    return values


def _check_pairs(pairs) -> list[tuple[str, str]]:
    if pairs is None or isinstance(pairs, (str, bytes, dict)):
        raise TypeError(f"sentence_pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}")
    items = list(pairs)
    for index, pair in enumerate(items):
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)):
            raise TypeError(f"sentence_pairs[{index}] is {pair!r:.80}, not a (query, passage) pair of two str")
    return [(q, p) for q, p in items]
