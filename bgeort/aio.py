"""`AsyncEmbedder` / `AsyncReranker`: the library for asyncio services, with cross-request batching.

    async with bgeort.AsyncEmbedder("models/bge-small-en-v1.5", max_queue=8192) as model:
        vectors = await model.encode(["hello", "world"])

Concurrent coroutines' texts wait in one bounded queue. An inference thread takes everything queued
with the same computation options (up to `max_batch_texts` texts), calls the wrapped `Embedder` /
`Reranker` once on the concatenation, so the library's own length-sorted token-budget batching packs
texts from many requests together, and hands each request exactly its own rows. Each request's input
is checked before it joins a batch, so a bad one fails alone; a cancelled request's queued texts are
dropped. Plain asyncio and one thread: no server stack (bgeort.server is the HTTP layer over this).

Cores: the inference thread runs one library call at a time, and that call tokenizes and then runs
onnxruntime on the model's `threads` (default: every core this process may use), so tokenizing never
competes with inference. An embedder and a reranker in one process share one `InferenceThread`
(pass `runner=`): they take turns, each using all the cores while it runs, instead of two thread
pools oversubscribing them (docs/server.md, "How the cores are shared").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from .embedder import Embedder
from .errors import BgeortError, QueueFullError
from .inputs import check_texts, positive, warn_truncated
from .pooling import l2_normalize
from .reranker import Ranking, Reranker, _is_pair, check_pairs, rank, sigmoid

# Texts waiting at most, per model: past it a call raises QueueFullError (HTTP 429). At the 2-core
# rates in bench/results (a few thousand one-sentence texts/s) this is a few seconds of work.
DEFAULT_MAX_QUEUE = 8192
# Texts one library call takes at most: the library splits them into its own small batches anyway;
# the cap bounds how long the requests gathered into one call wait for each other.
DEFAULT_MAX_BATCH_TEXTS = 1024
INSTRUCTIONS = ("none", "query", "passage")


class Embedded(NamedTuple):
    """What `AsyncEmbedder.embed` returns: vectors, tokens each text ran with, which were truncated."""

    vectors: np.ndarray
    token_counts: np.ndarray
    truncated: np.ndarray
    # bge-m3 folders, when asked (embed(..., sparse=True)): per text (int64 token ids ascending, float32 weights)
    sparse: list | None = None


class Scored(NamedTuple):
    """What `AsyncReranker.score` returns: scores, tokens each pair ran with, which were truncated."""

    scores: np.ndarray
    token_counts: np.ndarray
    truncated: np.ndarray


class BatchRecord(NamedTuple):
    """One library call: how many requests and texts it gathered, their tokens, and the times."""

    requests: int
    texts: int
    tokens: int
    queue_seconds: tuple  # per request: enqueued until its batch started
    inference_seconds: float


@dataclass
class BatchStats:
    """Counters of one async model's queue (read by bgeort serve's /metrics). `observers` are
    called with a `BatchRecord` after every batch, on the event loop."""

    batches: int = 0
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    queued_texts: int = 0
    rejected: int = 0
    cancelled: int = 0
    failed: int = 0
    observers: list = field(default_factory=list)

    def texts_per_second(self) -> float | None:
        return self.texts / self.inference_seconds if self.inference_seconds > 0 else None


def _slices(parts: list):
    """(slice of the batch's rows, options) per request, for `parts` = [(texts, options), ...]."""
    start = 0
    for count, options in parts:
        yield slice(start, start + count), options
        start += count


class InferenceThread:
    """The one thread that runs library calls. Share one between an AsyncEmbedder and an
    AsyncReranker so they take turns on the cores; whoever makes it closes it."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgeort-inference")

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class _Request:
    items: list
    key: tuple
    future: asyncio.Future
    enqueued: float
    options: object = None  # per-request choices the run applies to this request's rows (e.g. normalize)
    state: str = "queued"  # then "taken" (in a batch) or "dropped" (cancelled while queued)


class _BatchQueue:
    """The queue and the worker coroutine that feeds the inference thread."""

    def __init__(self, run: Callable, *, runner: InferenceThread, max_queue: int, max_batch_texts: int,
                 stats: BatchStats, name: str):
        # (key, items, [(texts, options) per request]) -> ([answer per request], tokens), on the inference
        # thread: splitting, normalizing and numpy's small calls stay off the event loop (bench/README.md,
        # "The server"); an answer is (result, whether any of its texts was truncated)
        self._run = run
        self._runner = runner
        self.max_queue = positive("max_queue", max_queue)
        self.max_batch_texts = positive("max_batch_texts", max_batch_texts)
        self.stats = stats
        self._name = name
        self._pending: deque[_Request] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.closed = False

    async def submit(self, items: list, key: tuple, options=None):
        if self.closed:
            raise BgeortError(f"this async {self._name} was closed; open a new one")
        if len(items) > self.max_queue:
            raise ValueError(f"{len(items)} texts in one call are more than max_queue={self.max_queue}; "
                             "split the call, or open the model with a larger max_queue")
        if self.stats.queued_texts + len(items) > self.max_queue:
            self.stats.rejected += 1
            raise QueueFullError(
                f"the {self._name}'s queue holds {self.stats.queued_texts} texts and takes at most "
                f"{self.max_queue} (max_queue); retry later", retry_after=self._retry_after())
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            # a worker per event loop: after asyncio.run() ends, the next one needs its own
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._work())
        request = _Request(items, key, loop.create_future(), time.perf_counter(), options)
        self._pending.append(request)
        self.stats.queued_texts += len(items)
        self._wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._drop(request)  # not taken yet: its texts never run
            raise

    def _drop(self, request: _Request) -> None:
        if request.state == "queued":
            request.state = "dropped"
            self.stats.queued_texts -= len(request.items)
            self.stats.cancelled += 1

    def _retry_after(self) -> float:
        rate = self.stats.texts_per_second()
        return 1.0 if rate is None else float(min(60, max(1, math.ceil(self.stats.queued_texts / rate))))

    def _take(self) -> list[_Request]:
        """The oldest live request and every later one with the same key, up to max_batch_texts texts."""
        group, rest, texts = [], deque(), 0
        while self._pending:
            request = self._pending.popleft()
            if request.state != "queued" or request.future.done():
                self._drop(request)
                continue
            if not group or (request.key == group[0].key and texts + len(request.items) <= self.max_batch_texts):
                request.state = "taken"
                group.append(request)
                texts += len(request.items)
                self.stats.queued_texts -= len(request.items)
            else:
                rest.append(request)
        self._pending = rest
        return group

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._pending:
                # straight after a batch: handlers it made ready enqueue before the take. Woken from
                # idle, every handler ready in that iteration has enqueued already, so no extra turn.
                await asyncio.sleep(0)
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            group = self._take()
            if group:
                try:
                    await self._run_group(loop, group)
                except Exception as exc:  # never leave a caller waiting on a dead worker
                    for request in group:
                        if not request.future.done():
                            request.future.set_exception(exc)

    async def _run_group(self, loop, group: list[_Request]) -> None:
        started = time.perf_counter()
        items = [item for request in group for item in request.items]
        parts = [(len(request.items), request.options) for request in group]
        try:
            answers, tokens = await loop.run_in_executor(self._runner.executor, self._run, group[0].key, items, parts)
        except Exception as exc:
            if len(group) == 1:
                self.stats.failed += 1
                if not group[0].future.done():
                    group[0].future.set_exception(exc)
                return
            # A batch that fails is rerun request by request, so a request that breaks it fails alone.
            for request in group:
                request.enqueued = started
                await self._run_group(loop, [request])
            return
        elapsed = time.perf_counter() - started
        for request, answer in zip(group, answers):
            if not request.future.done():  # a cancelled request's rows are dropped
                request.future.set_result(answer)
        record = BatchRecord(len(group), len(items), tokens,
                             tuple(started - request.enqueued for request in group), elapsed)
        stats = self.stats
        stats.batches += 1
        stats.requests += record.requests
        stats.texts += record.texts
        stats.tokens += record.tokens
        stats.queue_seconds += sum(record.queue_seconds)
        stats.inference_seconds += elapsed
        if stats.observers:  # after the callers just answered have run: they wait on nothing else
            loop.call_soon(self._observe, record)

    def _observe(self, record: BatchRecord) -> None:
        for observer in self.stats.observers:
            observer(record)

    async def close(self) -> None:
        self.closed = True
        if self._worker is not None and self._worker.get_loop() is asyncio.get_running_loop():
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(BgeortError(f"the async {self._name} was closed"))
        self._pending.clear()
        self.stats.queued_texts = 0


class _AsyncModel:
    _library: type
    _name: str

    def __init__(self, model, *, max_queue: int, max_batch_texts: int, runner: InferenceThread | None, options):
        if isinstance(model, self._library):
            if options:
                raise TypeError(f"options {sorted(options)} apply when opening a folder; the "
                                f"{self._library.__name__} given is already open")
            self.model, self._owns_model = model, False
        else:
            self.model, self._owns_model = self._library(model, **options), True
        self._owns_runner = runner is None
        self.runner = InferenceThread() if runner is None else runner
        self.stats = BatchStats()
        self._queue = _BatchQueue(self._run, runner=self.runner, max_queue=max_queue,
                                  max_batch_texts=max_batch_texts, stats=self.stats, name=self._name)

    @property
    def max_queue(self) -> int:
        return self._queue.max_queue

    async def close(self) -> None:
        """Fail what is still queued, stop the worker and the inference thread (if this object made
        it), and close the library model if this object opened it."""
        if self._queue.closed:
            return
        await self._queue.close()
        if self._owns_runner:
            self.runner.close()
        if self._owns_model:
            self.model.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Async{self.model!r}"


class AsyncEmbedder(_AsyncModel):
    """An `Embedder` for asyncio: concurrent calls are gathered into shared batches.

    `model` is a folder path (opened with the `Embedder` options given) or an open `Embedder`
    (then it stays the caller's to close). Per-call options: `max_length` (requests with different
    values run in different batches), `normalize` (applied per request on the inference thread, so it
    does not split batches).
    """

    _library, _name = Embedder, "embedder"

    def __init__(self, model, *, max_queue: int = DEFAULT_MAX_QUEUE, max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
                 runner: InferenceThread | None = None, **options):
        super().__init__(model, max_queue=max_queue, max_batch_texts=max_batch_texts, runner=runner, options=options)

    def _run(self, key: tuple, items: list[str], parts: list) -> tuple[list[Embedded], int]:
        max_length, sparse = key
        weights = None
        if not sparse:
            vectors, truncated, lengths = self.model.embed_window(items, max_length=max_length, normalize=False)
        else:
            out, truncated, lengths = self._m3().embed_window(items, max_length=max_length, sparse=True,
                                                              normalize=False)
            vectors, weights = out["dense_vecs"], list(zip(out["sparse_indices"], out["sparse_values"]))
        # one l2_normalize for the whole batch (rows are independent) instead of one per request
        normalized = l2_normalize(vectors) if any(normalize for _, normalize in parts) else None
        cut = bool(truncated.any())
        answers = [(Embedded((normalized if normalize else vectors)[part], lengths[part], truncated[part],
                             None if weights is None else weights[part]), cut and bool(truncated[part].any()))
                   for part, normalize in _slices(parts)]
        return answers, int(lengths.sum())

    def _m3(self):
        if getattr(self, "_m3_model", None) is None:
            from .m3 import M3Embedder

            self._m3_model = M3Embedder.around(self.model)
        return self._m3_model

    @property
    def has_sparse(self) -> bool:
        """Whether the folder gives lexical weights (bge-m3)."""
        return self.model.manifest.m3 is not None

    async def embed(self, texts, *, instruction: str = "none", max_length: int | None = None,
                    normalize: bool | None = None, sparse: bool = False) -> Embedded:
        """Vectors (N, dim) with the tokens each text ran with; `instruction` 'query' prepends the
        model's query instruction, 'passage' its passage instruction (if any), 'none' nothing.
        `sparse=True` (bge-m3 folders) adds each text's lexical weights as (ids, weights) arrays."""
        items = check_texts([texts] if isinstance(texts, str) else texts)
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True, False or None (the model's setting), got {normalize!r}")
        if sparse and not self.has_sparse:
            raise ValueError(f"{self.model.path} gives no sparse output (it is not a bge-m3 folder); "
                             "ask for dense vectors only")
        length = self.model._resolve_max_length(max_length)
        items = self._instructed(items, instruction)
        if not items:
            return Embedded(np.zeros((0, self.model.dim), dtype=np.float32), np.zeros(0, dtype=np.int64),
                            np.zeros(0, dtype=bool), [] if sparse else None)
        normalize = self.model.normalize_embeddings if normalize is None else normalize
        embedded, cut = await self._queue.submit(items, (length, bool(sparse)), normalize)
        if cut:
            warn_truncated(embedded.truncated, length)
        return embedded

    async def encode(self, texts, **options) -> np.ndarray:
        """As `Embedder.encode`: a list gives float32 (N, dim), a single str (dim,)."""
        vectors = (await self.embed(texts, **options)).vectors
        return vectors[0] if isinstance(texts, str) else vectors

    async def encode_queries(self, queries, **options) -> np.ndarray:
        vectors = (await self.embed(queries, instruction="query", **options)).vectors
        return vectors[0] if isinstance(queries, str) else vectors

    async def encode_corpus(self, corpus, **options) -> np.ndarray:
        vectors = (await self.embed(corpus, instruction="passage", **options)).vectors
        return vectors[0] if isinstance(corpus, str) else vectors

    def _instructed(self, items: list[str], instruction: str) -> list[str]:
        if instruction not in INSTRUCTIONS:
            raise ValueError(f"instruction must be one of {INSTRUCTIONS}, got {instruction!r}")
        prefix = {"none": "", "query": self.model.query_instruction,
                  "passage": self.model.manifest.passage_instruction or ""}[instruction]
        return [prefix + text for text in items] if prefix else items

    async def token_counts(self, texts, *, instruction: str = "none") -> np.ndarray:
        """Tokens per text before truncation, with the instruction as `embed` would prepend it
        (tokenized on the inference thread, not the event loop)."""
        items = self._instructed(check_texts([texts] if isinstance(texts, str) else texts), instruction)
        return await asyncio.get_running_loop().run_in_executor(self.runner.executor, self.model.token_counts, items)


class AsyncReranker(_AsyncModel):
    """A `Reranker` for asyncio: concurrent calls are gathered into shared batches.

    Per-call options: `max_length` and `sliding_window` (requests differing in them run in different
    batches), `normalize` (the sigmoid, applied per request, so it does not split batches).
    """

    _library, _name = Reranker, "reranker"

    def __init__(self, model, *, max_queue: int = DEFAULT_MAX_QUEUE, max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
                 runner: InferenceThread | None = None, **options):
        super().__init__(model, max_queue=max_queue, max_batch_texts=max_batch_texts, runner=runner, options=options)

    def _run(self, key: tuple, pairs: list, parts: list) -> tuple[list[Scored], int]:
        max_length, sliding_window = key
        logits, truncated, lengths = self.model.score_window(pairs, normalize=False, max_length=max_length,
                                                             sliding_window=sliding_window)
        cut = bool(truncated.any())
        answers = [(Scored(sigmoid(logits[part]) if normalize else logits[part], lengths[part], truncated[part]),
                    cut and bool(truncated[part].any())) for part, normalize in _slices(parts)]
        return answers, int(lengths.sum())

    async def score(self, pairs, *, normalize: bool = False, max_length: int | None = None,
                    sliding_window: bool = False) -> Scored:
        """Scores (N,) of [query, passage] pairs, with the tokens each pair ran with."""
        items = [tuple(pairs)] if _is_pair(pairs) else check_pairs(pairs)
        length = self.model.max_length if max_length is None else positive("max_length", max_length)
        if length > self.model.max_length:
            raise ValueError(f"max_length={length} is more than this model's {self.model.max_length} tokens; "
                             "pass a value up to that, or None")
        if not isinstance(sliding_window, bool):
            raise TypeError(f"sliding_window must be True or False, got {sliding_window!r}")
        if not items:
            return Scored(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        scored, cut = await self._queue.submit(items, (length, sliding_window), bool(normalize))
        if cut:
            warn_truncated(scored.truncated, length)
        return scored

    async def compute_score(self, pairs, **options):
        """As `Reranker.compute_score`: one pair gives a float, a list of pairs float32 (N,)."""
        scores = (await self.score(pairs, **options)).scores
        return float(scores[0]) if _is_pair(pairs) else scores

    async def rerank(self, query: str, documents, *, top_k: int | None = None, normalize: bool = True,
                     **options) -> Ranking:
        """As `Reranker.rerank`: documents best first (ties keep input order), at most `top_k`."""
        return (await self.rerank_counted(query, documents, top_k=top_k, normalize=normalize, **options))[0]

    async def rerank_counted(self, query: str, documents, *, top_k: int | None = None, normalize: bool = True,
                             **options) -> tuple[Ranking, Scored]:
        """`rerank` and the `Scored` of every document (for token counts)."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        documents = check_texts(documents)
        if top_k is not None:
            positive("top_k", top_k)
        scored = await self.score([(query, document) for document in documents], normalize=normalize, **options)
        return rank(scored.scores, top_k=top_k), scored
