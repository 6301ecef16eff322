"""`Embedder`: texts in, float32 vectors out, with the FlagEmbedding method names."""

from __future__ import annotations

import os

import numpy as np

from .batching import batch_defaults
from .inputs import READ_AHEAD, check_texts, positive, read_windows, warn_truncated
from .manifest import POOLED_OUTPUT, rebuild_hint
from .model import OpenModel
from .pooling import l2_normalize, pool
from .quantize import check_output_dtype, quantize


class Embedder:
    """An exported embedding model folder, opened for inference.

    >>> model = Embedder("models/bge-small-en-v1.5")
    >>> q = model.encode_queries(["what is a panda?"])      # instruction prepended
    >>> p = model.encode_corpus(["The giant panda is a bear native to China."])
    >>> scores = q @ p.T
    """

    def __init__(self, path: str | os.PathLike, *, precision: str = "auto", device: str = "auto",
                 threads: int | None = None, batch_size: int | None = None,
                 max_batch_tokens: int | None = None, query_instruction_for_retrieval: str | None = None,
                 normalize_embeddings: bool | None = None, spinning: bool | str = True, verify: bool = True,
                 side_by_side: bool | None = None):
        """Open the model folder at `path` (every option: docs/api.md).

        `query_instruction_for_retrieval` and `normalize_embeddings` are FlagEmbedding's FlagModel
        options; None keeps what the manifest says (the model card's instruction; normalize for BGE).
        """
        self._model = OpenModel.open(path, kind="embedder", precision=precision, device=device,
                                     threads=threads, spinning=spinning, verify=verify,
                                     side_by_side=side_by_side)
        manifest = self._model.manifest
        self.manifest = manifest
        default_size, default_tokens = batch_defaults(self._model.device)
        self.batch_size = default_size if batch_size is None else positive("batch_size", batch_size)
        self.max_batch_tokens = (default_tokens if max_batch_tokens is None
                                 else positive("max_batch_tokens", max_batch_tokens))
        self.query_instruction = (manifest.query_instruction if query_instruction_for_retrieval is None
                                  else query_instruction_for_retrieval)
        self.normalize_embeddings = manifest.normalize if normalize_embeddings is None else bool(normalize_embeddings)

    @property
    def path(self):
        return self._model.path

    @property
    def precision(self) -> str:
        """The variant that runs: 'fp32', 'fp32-unfused', 'int8' or 'fp16'."""
        return self._model.precision

    @property
    def device(self) -> str:
        return self._model.device

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    def __repr__(self) -> str:
        return (f"Embedder({str(self.path)!r}, precision={self.precision!r}, device={self.device!r}, "
                f"dim={self.dim}, max_length={self.max_length}, pooling={self.manifest.pooling!r})")

    def encode(self, texts, *, batch_size: int | None = None, max_length: int | None = None,
               normalize: bool | None = None, output_dtype: str = "float32") -> np.ndarray:
        """Embed texts: a list gives (N, dim); a single str gives (dim,).

        Texts longer than `max_length` tokens (default: the model's) are truncated, with a
        `TruncationWarning` naming them; `token_counts` gives every text's full length.
        `output_dtype` stores the vectors compactly: 'float16', 'int8'/'uint8' (per-dimension ranges
        from the manifest), 'binary'/'ubinary' (sign bits packed 8 to a byte); bgeort/quantize.py.
        """
        single = isinstance(texts, str)
        items = [texts] if single else check_texts(texts)
        vectors = self._embed(items, batch_size=batch_size, max_length=max_length, normalize=normalize,
                              output_dtype=output_dtype)
        return vectors[0] if single else vectors

    def encode_queries(self, queries, **options) -> np.ndarray:
        """`encode` with the model's query instruction prepended (BGE retrieval queries)."""
        single = isinstance(queries, str)
        items = [queries] if single else check_texts(queries)
        vectors = self._embed([self.query_instruction + text for text in items], **options)
        return vectors[0] if single else vectors

    def encode_corpus(self, corpus, **options) -> np.ndarray:
        """`encode` for passages: no instruction, as BGE was trained."""
        single = isinstance(corpus, str)
        items = [corpus] if single else check_texts(corpus)
        passage = self.manifest.passage_instruction
        vectors = self._embed([passage + text for text in items] if passage else items, **options)
        return vectors[0] if single else vectors

    def encode_iter(self, texts, *, window: int = READ_AHEAD, instruction: str = "", **options):
        """`encode` over any iterable of str (a generator, a file reader): yields one vector per
        text, in input order, holding at most `window` texts at a time (read ahead so that sorting by
        length still pays). Each window is one `encode` call; `instruction` is prepended to every text
        (`self.query_instruction` for queries). A window's vectors equal `encode`'s on those texts."""
        positive("window", window)
        for index, chunk in enumerate(read_windows(texts, window)):
            if instruction:
                chunk = [instruction + text for text in chunk]
            yield from self._embed(chunk, start=index * window, **options)

    def token_counts(self, texts) -> np.ndarray:
        """Tokens per text before any truncation, special tokens included (compare with max_length)."""
        items = [texts] if isinstance(texts, str) else check_texts(texts)
        return self._model.tokenizer.count_tokens(items)

    def close(self) -> None:
        """Release the runner threads and the session; the Embedder cannot encode after this."""
        self._model.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _embed(self, items: list[str], *, output_dtype: str = "float32", start: int = 0, **options) -> np.ndarray:
        check_output_dtype(output_dtype)
        vectors, truncated, _ = self.embed_window(items, **options)
        if truncated.any():
            warn_truncated(truncated, self._resolve_max_length(options.get("max_length")), start=start)
        return self.quantize(vectors, output_dtype)

    def quantize(self, vectors: np.ndarray, output_dtype: str) -> np.ndarray:
        """float32 vectors of this model as `output_dtype` (bgeort/quantize.py)."""
        return quantize(vectors, output_dtype, ranges=self.manifest.quantization_ranges,
                        hint=rebuild_hint(self.path, self.manifest.provenance.get("source")))

    def embed_window(self, items: list[str], *, batch_size: int | None = None, max_length: int | None = None,
                     normalize: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float32 vectors of `items` (checked str), which of them were truncated and how many tokens
        each ran as: what `encode` and the corpus job (bgeort/cli/embed.py) are built on."""
        length = self._resolve_max_length(max_length)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        pooling = self.manifest.pooling
        if self._model.output_name == POOLED_OUTPUT:  # the graph pools; its rows are the vectors
            reduce = lambda pooled, arrays: pooled  # noqa: E731
        else:
            reduce = lambda hidden, arrays: pool(hidden, arrays["attention_mask"], pooling)  # noqa: E731
        vectors, truncated, lengths = self._model.encode_and_run(
            items,
            lambda texts: self._model.tokenizer.encode(texts, max_length=length),
            batch_size=self.batch_size if batch_size is None else positive("batch_size", batch_size),
            max_tokens=self.max_batch_tokens,
            reduce=reduce,
            width=self.dim,
        )
        if self.normalize_embeddings if normalize is None else normalize:
            vectors = l2_normalize(vectors)
        return vectors, truncated, lengths

    def _resolve_max_length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.max_length
        positive("max_length", max_length)
        if max_length > self.max_length:
            raise ValueError(
                f"max_length={max_length} is more than this model's {self.max_length} tokens "
                "(its position embeddings end there); pass a value up to that, or None"
            )
        return max_length
