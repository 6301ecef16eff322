"""encode_iter / compute_score_iter: any iterable in, one row per input out, in order, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

import bgeort

TEXTS = [("word " * (i % 23 + 1)).strip() + f" number {i}" for i in range(150)]


class Counting:
    """A generator over items that records how far it has been read."""

    def __init__(self, items):
        self.items, self.read = items, 0

    def __iter__(self):
        for item in self.items:
            self.read += 1
            yield item


def test_encode_iter_equals_encode_in_order(tiny_model):
    model = bgeort.Embedder(tiny_model)
    expected = model.encode(TEXTS)
    one_window = np.stack(list(model.encode_iter(iter(TEXTS), window=len(TEXTS))))
    np.testing.assert_array_equal(one_window, expected)  # the same call on the same texts
    rows = list(model.encode_iter(iter(TEXTS), window=16))
    assert len(rows) == len(TEXTS) and all(row.dtype == np.float32 and row.shape == (model.dim,) for row in rows)
    for start in range(0, len(TEXTS), 16):  # each window is encode on its texts, bit for bit
        np.testing.assert_array_equal(np.stack(rows[start:start + 16]), model.encode(TEXTS[start:start + 16]))
    np.testing.assert_allclose(np.stack(rows), expected, atol=1e-6)  # batch shapes differ across windows only


def test_encode_iter_reads_ahead_at_most_a_window(tiny_model):
    model = bgeort.Embedder(tiny_model)
    source = Counting(TEXTS)
    stream = model.encode_iter(source, window=10)
    for taken in range(1, len(TEXTS) + 1):
        next(stream)
        assert taken <= source.read <= taken + 9 and source.read - (taken - 1) // 10 * 10 <= 10
    assert list(stream) == [] and source.read == len(TEXTS)


def test_encode_iter_instruction_and_options(tiny_model):
    model = bgeort.Embedder(tiny_model, query_instruction_for_retrieval="query: ")
    rows = np.stack(list(model.encode_iter(TEXTS[:20], instruction=model.query_instruction, max_length=8)))
    np.testing.assert_array_equal(rows, model.encode_queries(TEXTS[:20], max_length=8))
    assert list(model.encode_iter([])) == []


def test_encode_iter_names_a_bad_item_by_its_place_in_the_stream(tiny_model):
    model = bgeort.Embedder(tiny_model)
    with pytest.raises(TypeError, match=r"texts\[13\] is NoneType"):
        list(model.encode_iter(iter([*TEXTS[:13], None]), window=5))
    with pytest.raises(TypeError, match="iterable of str"):
        list(model.encode_iter("one string"))


def test_compute_score_iter_equals_compute_score(bert_reranker):
    model = bgeort.Reranker(bert_reranker)
    pairs = [("what is a panda?", text) for text in TEXTS[:40]]
    expected = model.compute_score(pairs)
    np.testing.assert_array_equal(np.array(list(model.compute_score_iter(iter(pairs), window=40))), expected)
    source = Counting(pairs)
    scores = model.compute_score_iter(source, window=8)
    next(scores)
    assert source.read == 8
    np.testing.assert_allclose([next(scores) for _ in range(39)], expected[1:], atol=1e-5)
    with pytest.raises(TypeError, match=r"pairs\[9\]"):
        list(model.compute_score_iter(iter([*pairs[:9], ("only one",)]), window=4))
