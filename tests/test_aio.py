"""bgeort.aio without HTTP: results equal the sync classes, concurrent calls share batches, a bad call
fails alone, cancellation drops queued work, a full queue refuses, close() leaves no threads."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import bgeort

pytestmark = pytest.mark.export

SENTENCES = ["the cat sat on the mat", "a man is playing guitar", "what is a panda ?", "hello world",
             "the red car is fast", "two dogs eat", "a woman is playing piano on the street", "big house"]


async def until(condition, seconds: float = 10.0) -> None:
    """Yield to the loop until condition() holds (bounded)."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


def blocked_runner():
    """An inference thread held by a gate, so requests stay queued until the test opens it."""
    runner = bgeort.InferenceThread()
    gate = threading.Event()
    runner.executor.submit(gate.wait, 30)
    return runner, gate


def test_results_equal_the_sync_embedder_and_calls_share_batches(tiny_model):
    sync = bgeort.Embedder(tiny_model)
    requests = [SENTENCES[i:i + 1 + i % 3] for i in range(len(SENTENCES))] * 2

    async def main():
        async with bgeort.AsyncEmbedder(tiny_model) as model:
            got = await asyncio.gather(*(model.encode(texts) for texts in requests))
            queries = await asyncio.gather(*(model.encode_queries(texts) for texts in requests[:4]))
            corpus = await model.encode_corpus(SENTENCES)
            single = await model.encode("hello world")
            return got, queries, corpus, single, model.stats

    got, queries, corpus, single, stats = asyncio.run(main())
    for texts, vectors in zip(requests, got):
        want = sync.encode(texts)
        assert vectors.dtype == np.float32 and vectors.shape == want.shape
        assert np.abs(vectors - want).max() <= 1e-6
    for texts, vectors in zip(requests[:4], queries):
        assert np.abs(vectors - sync.encode_queries(texts)).max() <= 1e-6
    assert np.abs(corpus - sync.encode_corpus(SENTENCES)).max() <= 1e-6
    assert single.shape == (sync.dim,) and np.abs(single - sync.encode("hello world")).max() <= 1e-6
    # 16 concurrent calls, then 4: each gather ran as far fewer library calls than requests
    assert stats.requests == len(requests) + 4 + 2
    assert stats.batches < len(requests) // 2, stats
    assert stats.texts == sum(map(len, requests)) + sum(map(len, requests[:4])) + len(SENTENCES) + 1
    assert stats.tokens == int(sync.token_counts([t for r in requests for t in r]).sum()
                               + sync.token_counts([sync.query_instruction + t for r in requests[:4] for t in r]).sum()
                               + sync.token_counts(SENTENCES).sum() + sync.token_counts(["hello world"]).sum())
    assert stats.queued_texts == 0 and stats.inference_seconds > 0
    sync.close()


def test_options_group_requests_and_token_counts_are_the_librarys(tiny_model):
    sync = bgeort.Embedder(tiny_model)

    async def main():
        async with bgeort.AsyncEmbedder(tiny_model) as model:
            records = []
            model.stats.observers.append(records.append)
            short, full, raw = await asyncio.gather(model.embed(SENTENCES, max_length=4), model.embed(SENTENCES),
                                                    model.embed(SENTENCES, normalize=False))
            return short, full, raw, records

    with pytest.warns(bgeort.TruncationWarning):
        short, full, raw, records = asyncio.run(main())
    with pytest.warns(bgeort.TruncationWarning):
        want_short = sync.encode(SENTENCES, max_length=4)
    assert np.abs(short.vectors - want_short).max() <= 1e-6
    assert np.abs(full.vectors - sync.encode(SENTENCES)).max() <= 1e-6
    assert np.abs(raw.vectors - sync.encode(SENTENCES, normalize=False)).max() <= 1e-6
    counts = sync.token_counts(SENTENCES)
    assert full.token_counts.tolist() == counts.tolist()
    assert short.token_counts.tolist() == np.minimum(counts, 4).tolist()
    assert short.truncated.tolist() == (counts > 4).tolist()
    # max_length changes the computation: its request ran in a batch of its own; normalize does not
    assert sorted(record.requests for record in records) == [1, 2]
    sync.close()


def test_a_failing_call_fails_alone(tiny_model):
    sync = bgeort.Embedder(tiny_model)

    async def main():
        async with bgeort.AsyncEmbedder(tiny_model) as model:
            return await asyncio.gather(model.encode(SENTENCES[:2]), model.encode(["fine", 3, "also"]),
                                        model.encode(SENTENCES[2:5]), model.encode(["x"], max_length=10_000),
                                        model.embed(["x"], instruction="questions"), return_exceptions=True)

    first, bad, third, too_long, unknown = asyncio.run(main())
    assert isinstance(bad, TypeError) and "texts[1] is int" in str(bad)
    assert isinstance(too_long, ValueError) and "max_length=10000" in str(too_long)
    assert isinstance(unknown, ValueError) and "instruction" in str(unknown)
    assert np.abs(first - sync.encode(SENTENCES[:2])).max() <= 1e-6
    assert np.abs(third - sync.encode(SENTENCES[2:5])).max() <= 1e-6
    sync.close()


def test_cancellation_drops_queued_work(tiny_model):
    async def main():
        runner, gate = blocked_runner()
        try:
            async with bgeort.AsyncEmbedder(tiny_model, runner=runner) as model:
                first = asyncio.ensure_future(model.encode(["hello world"]))
                await until(lambda: model.stats.queued_texts == 0 and first in asyncio.all_tasks())
                await asyncio.sleep(0.05)  # the worker took `first` and waits on the gated thread
                second = asyncio.ensure_future(model.encode(SENTENCES))
                await until(lambda: model.stats.queued_texts == len(SENTENCES))
                second.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await second
                assert model.stats.queued_texts == 0 and model.stats.cancelled == 1
                gate.set()
                vector = await first
                after = await model.encode(["a cat"])  # the queue still serves
                return vector, after, model.stats
        finally:
            gate.set()
            runner.close()

    vector, after, stats = asyncio.run(main())
    assert vector.shape[0] == 1 and after.shape[0] == 1
    assert stats.texts == 2 and stats.requests == 2  # the cancelled call's 8 texts never ran


def test_a_full_queue_raises_queue_full_error(tiny_model):
    async def main():
        runner, gate = blocked_runner()
        try:
            async with bgeort.AsyncEmbedder(tiny_model, runner=runner, max_queue=4) as model:
                taken = asyncio.ensure_future(model.encode(SENTENCES[:2]))
                await until(lambda: model.stats.queued_texts == 0)
                await asyncio.sleep(0.05)
                waiting = asyncio.ensure_future(model.encode(SENTENCES[:3]))
                await until(lambda: model.stats.queued_texts == 3)
                with pytest.raises(bgeort.QueueFullError, match="max_queue") as refused:
                    await model.encode(SENTENCES[:2])
                with pytest.raises(ValueError, match="more than max_queue=4"):
                    await model.encode(SENTENCES[:5])
                gate.set()
                done = await asyncio.gather(taken, waiting)
                return refused.value, done, model.stats
        finally:
            gate.set()
            runner.close()

    refused, done, stats = asyncio.run(main())
    assert isinstance(refused, bgeort.BgeortError) and refused.retry_after >= 1
    assert [len(v) for v in done] == [2, 3] and stats.rejected == 1


def test_reranker_equals_the_sync_reranker(bert_reranker):
    sync = bgeort.Reranker(bert_reranker)
    query, documents = "what is a panda ?", ["the panda is a bear", "hello world", "a cat sat on the mat", "china"]
    pairs = [(query, document) for document in documents]

    async def main():
        async with bgeort.AsyncReranker(bert_reranker) as model:
            return await asyncio.gather(model.compute_score(pairs), model.compute_score(pairs, normalize=True),
                                        model.rerank(query, documents), model.rerank(query, documents, top_k=2),
                                        model.compute_score(list(pairs[0])), model.rerank_counted(query, documents)), \
                model.stats

    (raw, normalized, ranking, top, one, (_, scored)), stats = asyncio.run(main())
    assert np.abs(raw - sync.compute_score(pairs)).max() <= 1e-6
    assert np.abs(normalized - sync.compute_score(pairs, normalize=True)).max() <= 1e-6
    want = sync.rerank(query, documents)
    assert ranking.indices.tolist() == want.indices.tolist()
    assert np.abs(ranking.scores - want.scores).max() <= 1e-6
    assert top.indices.tolist() == want.indices[:2].tolist()
    assert abs(one - sync.compute_score(list(pairs[0]))) <= 1e-6
    assert scored.token_counts.sum() > 0 and stats.batches < 6
    sync.close()


def test_close_leaves_no_threads(tiny_model, bert_reranker):
    bgeort.Embedder(tiny_model).close()  # anything opened once per process (onnxruntime's own) is in the baseline
    before = set(threading.enumerate())

    async def main():
        runner = bgeort.InferenceThread()
        embedder = bgeort.AsyncEmbedder(tiny_model, threads=2, batch_size=4, runner=runner)
        reranker = bgeort.AsyncReranker(bert_reranker, threads=2, runner=runner)
        await asyncio.gather(embedder.encode(SENTENCES * 4), reranker.compute_score([("a", "b")] * 9))
        names = {thread.name.split("_")[0] for thread in threading.enumerate()}
        await embedder.close()
        await reranker.close()
        runner.close()
        with pytest.raises(bgeort.BgeortError, match="closed"):
            await embedder.encode(["again"])
        return names

    names = asyncio.run(main())
    assert {"bgeort-inference", "bgeort-run"} <= names  # the threads that close() must stop did run
    assert set(threading.enumerate()) == before
    with bgeort.Embedder(tiny_model, threads=2, batch_size=2) as model:
        model.encode(SENTENCES)
    assert set(threading.enumerate()) == before
    with pytest.raises(bgeort.BgeortError, match="closed"):
        model.encode(["after close"])


def test_one_model_serves_one_event_loop_after_another(tiny_model):
    model = bgeort.AsyncEmbedder(tiny_model)
    first = asyncio.run(asyncio.wait_for(model.encode(SENTENCES[:2]), 30))
    second = asyncio.run(asyncio.wait_for(model.encode(SENTENCES[:2]), 30))  # a new loop, a new worker
    asyncio.run(model.close())
    assert np.array_equal(first, second) and model.stats.batches == 2
