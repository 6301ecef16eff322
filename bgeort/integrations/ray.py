"""Ray Data: `Embed` and `Rerank`, callable classes for `Dataset.map_batches` on an actor pool, and
`embed_dataset`, which picks the settings. docs/integrations.md has a cluster recipe and the pitfalls.

    ds = ray.data.read_parquet("texts.parquet")          # columns: id, text
    ds = embed_dataset(ds, "models/bge-small-en-v1.5")   # actors: the cluster's CPUs less one
    ds.write_parquet("vectors/")                          # id, text, embedding (fixed-size list<float>)
"""

from __future__ import annotations

import warnings

from . import require

ray = require("ray")
pa = require("pyarrow")

from ..embedder import Embedder  # noqa: E402
from ..inputs import check_texts, positive  # noqa: E402
from ..reranker import Reranker  # noqa: E402

INSTRUCTIONS = ("passage", "query", "none")
# Rows per call: enough for the Embedder to sort by length and pack batches by tokens, few enough
# that an actor's output block stays small (384 float32 x 1,024 rows = 1.5 MB).
BATCH_SIZE = 1024


def actor_threads() -> int:
    """The CPUs Ray gave this actor (at least 1): the onnxruntime thread count that does not
    oversubscribe the node. Outside Ray, every core (onnxruntime's default)."""
    if not ray.is_initialized():
        from ..session import default_threads

        return default_threads()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


def _as_table(batch) -> "pa.Table":
    """A map_batches batch (a dict of numpy arrays, a pandas DataFrame or a pyarrow Table) as Arrow."""
    if isinstance(batch, pa.Table):
        return batch
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block(batch)
    return block if isinstance(block, pa.Table) else pa.Table.from_pandas(block, preserve_index=False)


def _column(table: "pa.Table", name: str, role: str) -> list[str]:
    if name not in table.column_names:
        raise KeyError(f"the batch has no column {name!r} ({role}); it has {table.column_names}. "
                       f"Name the right one with fn_constructor_kwargs={{'{role}_column': ...}}")
    try:
        return check_texts(table.column(name).to_pylist())
    except TypeError as exc:
        raise TypeError(f"column {name!r}: {exc}") from None


class Embed:
    """Adds an `output_column` of float32 vectors (a fixed-size list in Arrow and Parquet) embedding
    `text_column`; other columns are kept. `instruction`: 'passage' (encode_corpus, the default),
    'query' (encode_queries) or 'none' (encode). The model opens once per actor, with as many
    onnxruntime threads as the actor has CPUs unless `threads` says otherwise; `options` are the
    other `bgeort.Embedder` options."""

    def __init__(self, model_path, *, text_column: str = "text", output_column: str = "embedding",
                 instruction: str = "passage", threads: int | None = None, **options):
        if instruction not in INSTRUCTIONS:
            raise ValueError(f"instruction must be one of {INSTRUCTIONS}, got {instruction!r}")
        self.embedder = Embedder(model_path, threads=actor_threads() if threads is None else threads, **options)
        self.text_column, self.output_column = text_column, output_column
        self.encode = {"passage": self.embedder.encode_corpus, "query": self.embedder.encode_queries,
                       "none": self.embedder.encode}[instruction]

    def __call__(self, batch) -> "pa.Table":
        table = _as_table(batch)
        vectors = self.encode(_column(table, self.text_column, "text"))
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
        return table.append_column(self.output_column, column)


class Rerank:
    """Adds a float32 `output_column` scoring each row's (`query_column`, `document_column`) pair
    (the sigmoid of the logit when `normalize`); other columns are kept. Threads and `options` as `Embed`."""

    def __init__(self, model_path, *, query_column: str = "query", document_column: str = "document",
                 output_column: str = "score", normalize: bool = True, threads: int | None = None, **options):
        self.reranker = Reranker(model_path, threads=actor_threads() if threads is None else threads, **options)
        self.query_column, self.document_column, self.output_column = query_column, document_column, output_column
        self.normalize = normalize

    def __call__(self, batch) -> "pa.Table":
        table = _as_table(batch)
        pairs = list(zip(_column(table, self.query_column, "query"), _column(table, self.document_column, "document")))
        scores = self.reranker.compute_score(pairs, normalize=self.normalize) if pairs else []
        return table.append_column(self.output_column, pa.array(scores, pa.float32()))


def default_actors(cluster_cpus: float, cpus_per_actor: int) -> int:
    """Actors that leave one of the cluster's CPUs to the read and write tasks (each asks for 1 CPU
    by default; actors holding every CPU starve them and the job stalls: docs/integrations.md)."""
    return max(1, (int(cluster_cpus) - 1) // cpus_per_actor)


def embed_dataset(ds, model_path, *, actors: int | None = None, cpus_per_actor: int = 1,
                  batch_size: int = BATCH_SIZE, **embed_options):
    """`ds.map_batches(Embed, ...)` on a pool of `actors` actors of `cpus_per_actor` CPUs each
    (default: as many as the cluster's CPUs hold with one CPU left for the read and write tasks),
    in Arrow batches of `batch_size` rows. `embed_options` go to `Embed` (text_column,
    output_column, instruction, precision, ...). Rows may come out in another order: carry an id column."""
    positive("cpus_per_actor", cpus_per_actor)
    positive("batch_size", batch_size)
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    if actors is None:
        actors = default_actors(cluster_cpus, cpus_per_actor)
    positive("actors", actors)
    if actors * cpus_per_actor >= cluster_cpus:
        warnings.warn(f"{actors} actor(s) x {cpus_per_actor} CPU(s) hold all {cluster_cpus:g} CPUs of the cluster: "
                      f"the read and write tasks (a file read's listing task asks for a whole CPU) wait for them "
                      f"and the job can stall for good. Leave a CPU free: actors="
                      f"{default_actors(cluster_cpus, cpus_per_actor)}, or leave actors= out", RuntimeWarning,
                      stacklevel=2)
    return ds.map_batches(Embed, fn_constructor_kwargs={"model_path": str(model_path), **embed_options},
                          compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                          batch_size=batch_size, batch_format="pyarrow")
