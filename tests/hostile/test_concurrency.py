"""One Embedder and one Reranker shared by 16 threads (and by asyncio through a thread pool) give exactly
the sequential results; texts of mixed lengths, so the side-by-side session and the main one both run."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bgeort

pytestmark = pytest.mark.filterwarnings("ignore::bgeort.TruncationWarning")
WORDS = "the a man woman is playing guitar piano on street cat dog sat mat panda bear china".split()


def mixed_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.choice([2, 5, 12, 40, 90]))) for _ in range(count)]


@pytest.fixture(scope="module")
def embedder(tiny_model):
    model = bgeort.Embedder(tiny_model, threads=2, side_by_side=True)
    assert model._model.threads == 2 and model._model.side_by_side
    return model


def test_sixteen_threads_get_the_sequential_vectors(embedder, bert_reranker):
    reranker = bgeort.Reranker(bert_reranker, threads=2, side_by_side=True)
    jobs = [mixed_texts(seed, 1 + seed % 23) for seed in range(64)]
    expected = [embedder.encode(texts) for texts in jobs]
    expected_scores = [reranker.compute_score([(texts[0], t) for t in texts]) for texts in jobs]
    errors = []

    def work(i: int):
        if i % 5 == 4:  # bad calls in between: they fail alone
            try:
                embedder.encode(["fine", None])
            except TypeError:
                pass
            else:
                errors.append("no TypeError")
        return (embedder.encode(jobs[i]), reranker.compute_score([(jobs[i][0], t) for t in jobs[i]]))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(len(jobs))))
    assert not errors
    for (vectors, scores), want, want_scores in zip(results, expected, expected_scores):
        np.testing.assert_array_equal(vectors, want)
        np.testing.assert_array_equal(scores, want_scores)
    assert embedder._model._side is not None  # the side-by-side session did run


def test_asyncio_through_a_thread_pool(embedder):
    jobs = [mixed_texts(100 + seed, 7) for seed in range(32)]
    expected = [embedder.encode(texts) for texts in jobs]

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(None, embedder.encode, texts) for texts in jobs))

    for got, want in zip(asyncio.run(main()), expected):
        np.testing.assert_array_equal(got, want)


def test_no_deadlock_when_threads_outnumber_cores(embedder):
    done = []
    threads = [threading.Thread(target=lambda i=i: done.append(embedder.encode(mixed_texts(i, 3)).shape))
               for i in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert done == [(3, embedder.dim)] * 48
