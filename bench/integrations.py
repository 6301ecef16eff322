"""`python bench/integrations.py MODEL`: what the framework adapters cost over bgeort itself.

1. Wrapper overhead: the same passages (SciFact abstracts cut into 64-word pieces) through
   `Embedder.encode_corpus` and through LangChain's `embed_documents`, LlamaIndex's
   `get_text_embedding_batch` and Haystack's document embedder (its Documents made once, outside the
   timing, as a user holds them), interleaved, best of `--rounds`
   per path (the best is the run the shared machine disturbed least), and what each wrapper adds in
   the same call: its time minus the time inside encode_corpus (this machine's noise between rounds
   exceeds the 5% target; inside one call the model's run cancels). Target: <= 5% over encode_corpus.
   With `--reranker DIR` the same for the rerank wrappers (LangChain's compressor, LlamaIndex's
   postprocessor, Haystack's ranker) against `Reranker.rerank`: queries, each against the same passages.
2. Ray Data on a local cluster of `--ray-cpus` CPUs: one Parquet file of STS-B sentences + SciFact
   pieces, read -> Embed -> write Parquet, with embed_dataset's defaults (a CPU left for the read and
   write tasks: actors on every CPU stall the job), against one in-process
   `Embedder(threads=2)` reading and writing the same files. Texts/s end to end (actor start
   included: that is what a job pays), with ds.stats() showing where the time goes.

Prints a markdown table; never asserts. A smoke run: `--passages 300 --ray-texts 500 --rounds 1`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpora import scifact_texts, stsb_pairs  # noqa: E402


def passages(count: int, *, words: int = 64) -> list[str]:
    pieces = []
    for abstract in scifact_texts():
        tokens = abstract.split()
        pieces.extend(" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words))
        if len(pieces) >= count:
            break
    return pieces[:count]


def wrapper_paths(model: str, threads: int, control: bool = False) -> dict:
    """name -> (a function embedding a list of texts, the Embedder it calls); every path opens its own
    copy of the model. `control`: a second, identical encode_corpus path last, whose best-vs-best
    shows what this machine's noise alone makes of two equal paths."""
    import bgeort

    direct = bgeort.Embedder(model, threads=threads)
    paths = {"Embedder.encode_corpus": (lambda texts: direct.encode_corpus(texts), direct)}
    try:
        from bgeort.integrations.langchain import BgeortEmbeddings

        langchain = BgeortEmbeddings(model, threads=threads)
        paths["LangChain embed_documents"] = (langchain.embed_documents, langchain.embedder)
    except ImportError:
        pass
    try:
        from bgeort.integrations.llama_index import BgeortEmbedding

        llama = BgeortEmbedding(model, threads=threads)
        paths["LlamaIndex get_text_embedding_batch"] = (llama.get_text_embedding_batch, llama._embedder)
    except ImportError:
        pass
    try:
        from haystack import Document

        from bgeort.integrations.haystack import BgeortDocumentEmbedder

        embedder = BgeortDocumentEmbedder(model, threads=threads)
        embedder.warm_up()
        documents = {}  # a user holds Documents already: they are made once per list, outside the timing

        def prepare(texts: list[str]) -> list:
            return documents.setdefault(id(texts), [Document(content=text) for text in texts])

        def haystack_run(texts: list[str]):
            return embedder.run(prepare(texts))

        haystack_run.prepare = prepare
        paths["Haystack BgeortDocumentEmbedder.run"] = (haystack_run, embedder.model)
    except ImportError:
        pass
    if control:
        twin = bgeort.Embedder(model, threads=threads)
        paths["control: Embedder.encode_corpus, a second copy"] = (lambda texts: twin.encode_corpus(texts), twin)
    return paths


def time_inside(model, method: str = "encode_corpus") -> list[float]:
    """Make `model.<method>` (this instance only) record the seconds of each call into the returned
    list: the wrapper's own time is then its call's time minus that, in the same call."""
    inner = getattr(model, method)
    spent: list[float] = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(model, method, timed)
    return spent


def measure_wrappers(model: str, texts: list[str], *, threads: int, rounds: int, control: bool = False) -> list[dict]:
    """Per path: its best call (against encode_corpus's best: the end-to-end comparison, which this
    machine's noise moves by several percent), and what the wrapper itself added in each call (its
    call's time minus the time inside encode_corpus in that call: noise in the model's run cancels),
    median over the rounds, as ms and as % of that time inside."""
    return measure_paths(wrapper_paths(model, threads, control), texts, rounds=rounds, method="encode_corpus")


def measure_paths(paths: dict, texts: list[str], *, rounds: int, method: str, warm: int = 64) -> list[dict]:
    inside = {name: time_inside(library, method) for name, (_, library) in paths.items()}
    for run, _ in paths.values():
        run(texts[:warm])  # sessions warm (side session, arenas)
        if hasattr(run, "prepare"):
            run.prepare(texts)
    best = {name: float("inf") for name in paths}
    added = {name: [] for name in paths}
    names = list(paths)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:  # each round starts elsewhere
            run = paths[name][0]
            gc.collect()
            inside[name].clear()
            start = time.perf_counter()
            run(texts)
            seconds = time.perf_counter() - start
            best[name] = min(best[name], seconds)
            within = sum(inside[name])
            added[name].append((seconds - within, within))
    base = best[names[0]]  # the library's own method comes first
    rows = []
    for name, seconds in best.items():
        extra = statistics.median(outside for outside, _ in added[name])
        share = statistics.median(100 * outside / within for outside, within in added[name])
        rows.append({"path": name, "seconds": seconds, "texts_per_s": len(texts) / seconds,
                     "overhead_pct": 100 * (seconds / base - 1), "added_ms": 1000 * extra, "added_pct": share})
    return rows


def rerank_paths(model: str, threads: int, top: int) -> dict:
    """name -> (a function reranking (query, texts), the Reranker it calls), each wrapper with its own
    copy of the model; the frameworks' documents and nodes are made once per list, outside the timing."""
    import bgeort

    direct = bgeort.Reranker(model, threads=threads)
    paths = {"Reranker.rerank": (lambda query, texts: direct.rerank(query, texts, top_k=top), direct)}
    held: dict = {}

    def held_as(kind, texts, make):
        return held.setdefault((kind, id(texts)), [make(text) for text in texts])

    try:
        from langchain_core.documents import Document as LangChainDocument

        from bgeort.integrations.langchain import BgeortRerank

        langchain = BgeortRerank(model, top_n=top, threads=threads)
        paths["LangChain BgeortRerank.compress_documents"] = (
            lambda query, texts: langchain.compress_documents(
                held_as("langchain", texts, lambda t: LangChainDocument(page_content=t)), query),
            langchain._reranker)
    except ImportError:
        pass
    try:
        from llama_index.core.schema import NodeWithScore, TextNode

        from bgeort.integrations.llama_index import BgeortRerank as LlamaRerank

        llama = LlamaRerank(model, top_n=top, threads=threads)
        paths["LlamaIndex BgeortRerank.postprocess_nodes"] = (
            lambda query, texts: llama.postprocess_nodes(
                held_as("llama", texts, lambda t: NodeWithScore(node=TextNode(text=t))), query_str=query),
            llama._reranker)
    except ImportError:
        pass
    try:
        from haystack import Document

        from bgeort.integrations.haystack import BgeortRanker

        ranker = BgeortRanker(model, top_k=top, threads=threads)
        ranker.warm_up()
        paths["Haystack BgeortRanker.run"] = (
            lambda query, texts: ranker.run(query=query, documents=held_as("haystack", texts,
                                                                            lambda t: Document(content=t))),
            ranker.model)
    except ImportError:
        pass
    return paths


def measure_rerank(model: str, queries: list[str], texts: list[str], *, threads: int, rounds: int,
                   top: int) -> list[dict]:
    """Each query against the same `texts`, through Reranker.rerank and each wrapper: as measure_paths."""
    paths = {name: ((lambda run: lambda batch: [run(query, texts) for query in batch])(run), library)
             for name, (run, library) in rerank_paths(model, threads, top).items()}
    return measure_paths(paths, queries, rounds=rounds, method="rerank", warm=2)


def measure_ray(model: str, texts: list[str], *, cpus: int, batch_size: int, folder: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from bgeort.integrations.ray import Embed, default_actors, embed_dataset

    source = folder / "texts.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
    rows = []
    start = time.perf_counter()
    table = pq.read_table(source)
    embed = Embed(model, threads=cpus)
    pq.write_table(embed(table), folder / "in_process.parquet")
    rows.append({"setup": f"in-process Embedder, {cpus} threads", "texts_per_s": len(texts) / (time.perf_counter() - start)})
    del embed
    ray.init(num_cpus=cpus, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    deadline = time.monotonic() + 60  # on a loaded machine the node's CPUs show up a while after init
    while ray.cluster_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(1)
    try:
        # embed_dataset's default leaves a CPU to the read and write tasks: actors on every CPU starve
        # the read's file listing (a whole CPU whatever read_parquet's ray_remote_args say) for good
        start = time.perf_counter()
        ds = embed_dataset(ray.data.read_parquet(str(source)), model, batch_size=batch_size)
        ds.write_parquet(str(folder / "ray"))
        seconds = time.perf_counter() - start
        actors = default_actors(cpus, 1)
        rows.append({"setup": f"Ray Data, embed_dataset's defaults: {actors} actor(s) x 1 CPU, batch {batch_size}",
                         "texts_per_s": len(texts) / seconds, "stats": ds.stats()})
        # every core computing, a CPU's share still free for the reads and writes: actors of half a CPU
        start = time.perf_counter()
        ds = ray.data.read_parquet(str(source)).map_batches(
            Embed, fn_constructor_kwargs={"model_path": str(model), "threads": 1}, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cpus), num_cpus=0.5, batch_size=batch_size)
        ds.write_parquet(str(folder / "ray_half"))
        seconds = time.perf_counter() - start
        rows.append({"setup": f"Ray Data, {cpus} actors x 0.5 CPU (1 thread each), batch {batch_size}",
                     "texts_per_s": len(texts) / seconds, "stats": ds.stats()})
    finally:
        ray.shutdown()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported embedder folder")
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--control", action="store_true",
                        help="add a second, identical encode_corpus path: the noise between two equal paths")
    parser.add_argument("--reranker", help="an exported reranker folder: also measure the rerank wrappers")
    parser.add_argument("--rerank-queries", type=int, default=20)
    parser.add_argument("--rerank-documents", type=int, default=100)
    parser.add_argument("--rerank-top", type=int, default=10)
    parser.add_argument("--ray-texts", type=int, default=20_000, help="0 skips the Ray part")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--ray-batch-size", type=int, default=1024)
    args = parser.parse_args(argv)

    from bench.environment import environment_line

    print(f"# Integrations: what the framework adapters cost over bgeort\n\nCommand: `python bench/integrations.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
          + environment_line(("bgeort", "onnxruntime", "numpy", "langchain-core", "llama-index-core", "haystack-ai",
                              "ray", "pyarrow")) + "\n")
    texts = passages(args.passages)
    print(f"## Wrapper overhead: {len(texts)} SciFact passages (64-word pieces), {args.threads} threads, "
          f"best of {args.rounds}\n\n'added by the wrapper': its call's time minus the time inside "
          "`Embedder.encode_corpus` in that same call, median over the rounds (the model's run, and the noise "
          "in it, cancels); 'best vs best': the path's best call against encode_corpus's best.\n\n"
          "| path | best s | texts/s | best vs best | added by the wrapper ms | added, % of encode_corpus |\n"
          "|---|---:|---:|---:|---:|---:|")
    for row in measure_wrappers(args.model, texts, threads=args.threads, rounds=args.rounds, control=args.control):
        print(f"| {row['path']} | {row['seconds']:.3f} | {row['texts_per_s']:.1f} | {row['overhead_pct']:+.2f}% | "
              f"{row['added_ms']:.1f} | {row['added_pct']:.3f}% |")
    if args.reranker:
        first, _, _ = stsb_pairs()
        queries = list(dict.fromkeys(first))[:args.rerank_queries]
        documents = passages(args.rerank_documents)
        print(f"\n## Rerank wrappers: {len(queries)} STS-B sentences as queries, each against the same "
              f"{len(documents)} SciFact passages, top {args.rerank_top}, {args.threads} threads, best of {args.rounds}\n\n"
              "'added by the wrapper' as above, against the time inside `Reranker.rerank`.\n\n"
              "| path | best s | queries/s | best vs best | added by the wrapper ms | added, % of rerank |\n"
              "|---|---:|---:|---:|---:|---:|")
        for row in measure_rerank(args.reranker, queries, documents, threads=args.threads, rounds=args.rounds,
                                  top=args.rerank_top):
            print(f"| {row['path']} | {row['seconds']:.3f} | {row['texts_per_s']:.2f} | {row['overhead_pct']:+.2f}% | "
                  f"{row['added_ms']:.1f} | {row['added_pct']:.3f}% |")
    if args.ray_texts:
        first, second, _ = stsb_pairs()
        pool = list(dict.fromkeys(first + second)) + passages(args.ray_texts)
        ray_texts = pool[:args.ray_texts]
        print(f"\n## Ray Data: {len(ray_texts)} texts (STS-B sentences, then SciFact pieces), Parquet in and out, "
              f"{args.ray_cpus} CPUs\n\n| setup | texts/s end to end |\n|---|---|")
        with tempfile.TemporaryDirectory() as folder:
            rows = measure_ray(args.model, ray_texts, cpus=args.ray_cpus, batch_size=args.ray_batch_size,
                               folder=Path(folder))
        for row in rows:
            print(f"| {row['setup']} | {row['texts_per_s']:.1f} |")
        for row in rows:
            if "stats" in row:
                print(f"\n### {row['setup']}: ds.stats()\n\n```\n{row['stats']}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
