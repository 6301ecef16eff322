"""Hostile inputs to Embedder and Reranker: each gets a correct result or a TypeError/ValueError naming
the offending index; never a crash, a hang or a silently wrong vector.

"Correct" is checked against the library's own definition where no reference applies: a text's vector
is the one it gets alone, whatever its neighbours, and a text past the max length embeds as its first
max_length tokens do (the PyTorch parity of those vectors is tests/test_embedder.py's and export's job).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bgeort
from bgeort import TruncationWarning

pytestmark = pytest.mark.filterwarnings("ignore::bgeort.TruncationWarning")

EXOTIC = [
    "",
    "   \n\t  ",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f",
    "\u200b\u200c\u200d\ufeff zero width",
    "\u202e\u200f שלום עולם مرحبا بالعالم",
    "😀👍🏽🇺🇳 👨‍👩‍👧‍👦",
    "中文 日本語 한국어",
    "a" * 100_000,  # one 100,000-character token
    "e\u0301 combining, ﬁ ligature, Ｆｕｌｌ width",
]


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return bgeort.Embedder(tiny_model)


@pytest.fixture(scope="module")
def reranker(bert_reranker):
    return bgeort.Reranker(bert_reranker)


def alone(embedder, texts):
    return np.stack([embedder.encode([text])[0] for text in texts])


def test_exotic_text_gets_a_finite_unit_vector_independent_of_its_batch(embedder):
    together = embedder.encode(EXOTIC + ["the cat sat on the mat"])
    assert together.shape == (len(EXOTIC) + 1, embedder.dim) and together.dtype == np.float32
    assert np.isfinite(together).all()
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone(embedder, EXOTIC + ["the cat sat on the mat"]), atol=2e-6)


def test_a_10_mb_text_embeds_as_its_first_max_length_tokens(embedder):
    huge = "the cat sat on the mat " * 450_000  # 10.3 MB
    with pytest.warns(TruncationWarning, match="1 of 1 inputs"):
        vector = embedder.encode([huge])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = embedder.encode(["the cat sat on the mat " * 20])  # 120 words: past max_length 64 too
    np.testing.assert_allclose(vector, expected, atol=1e-6)


def test_containers_of_str_all_work_and_agree(embedder):
    import pandas as pd

    texts = ["a cat", "a dog", "the red house"]
    expected = embedder.encode(texts)
    for given in (tuple(texts), (t for t in texts), np.array(texts), np.array(texts, dtype=object),
                  pd.Series(texts, index=[10, 20, 30])):
        np.testing.assert_array_equal(embedder.encode(given), expected)
    assert embedder.encode([]).shape == (0, embedder.dim)
    np.testing.assert_array_equal(embedder.encode("a cat"), expected[0])  # a bare str: one vector


def test_a_100000_item_list(embedder):
    texts = [f"{word} {i}" for i, word in zip(range(100_000), ["cat", "dog", "red house", "blue car"] * 25_000)]
    vectors = embedder.encode(texts)
    assert vectors.shape == (100_000, embedder.dim) and np.isfinite(vectors).all()
    probe = [0, 1, 2, 3, 4_999, 77_777, 99_999]
    np.testing.assert_allclose(vectors[probe], embedder.encode([texts[i] for i in probe]), atol=2e-6)


@pytest.mark.parametrize("texts, error, message", [
    (None, TypeError, "got NoneType"),
    (b"bytes", TypeError, "got bytes"),
    (3.5, TypeError, "got float"),
    ({"a": 1}, TypeError, "got dict"),
    (["ok", None], TypeError, r"texts\[1\] is NoneType"),
    (["ok", b"raw"], TypeError, r"texts\[1\] is bytes"),
    (["ok", ["nested"]], TypeError, r"texts\[1\] is list"),
    (["ok", 7], TypeError, r"texts\[1\] is int"),
    (["ok", "fine", "bad \ud800 surrogate"], ValueError, r"texts\[2\] is not valid Unicode: .*lone surrogate"),
    (np.array([1, 2]), TypeError, r"texts\[0\] is int64"),
])
def test_bad_texts_name_the_problem_and_leave_the_model_usable(embedder, texts, error, message):
    for method in (embedder.encode, embedder.encode_queries, embedder.encode_corpus, embedder.token_counts):
        with pytest.raises(error, match=message):
            method(texts)
    np.testing.assert_allclose(embedder.encode(["a cat"]), alone(embedder, ["a cat"]), atol=1e-6)


def test_exotic_pairs_score_as_they_do_alone(reranker):
    pairs = [(query, passage) for query in EXOTIC[:5] for passage in EXOTIC[3:]] + [("what is a panda", "")]
    scores = reranker.compute_score(pairs)
    assert scores.shape == (len(pairs),) and scores.dtype == np.float32 and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, [reranker.compute_score(pair) for pair in pairs], atol=2e-5)


def test_a_10_mb_passage_scores_as_its_truncated_form(reranker):
    huge = "the panda is a bear " * 520_000
    with pytest.warns(TruncationWarning):
        score = reranker.compute_score(("what is a panda", huge))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reranker.compute_score(("what is a panda", "the panda is a bear " * 60))
    assert score == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("pairs, error, message", [
    ([("q", "p"), ("q",)], TypeError, r"pairs\[1\] is \('q',\)"),
    ([("q", "p"), ("q", "p", "x")], TypeError, r"pairs\[1\]"),
    ([("q", None)], TypeError, r"pairs\[0\]"),
    ("qp", TypeError, "got str"),
    (None, TypeError, "got NoneType"),
    ([("ok", "ok"), ("bad \udcff", "p")], ValueError, r"pairs\[1\]\[0\] is not valid Unicode"),
    ([("ok", "ok"), ("q", "bad \udcff")], ValueError, r"pairs\[1\]\[1\] is not valid Unicode"),
])
def test_bad_pairs_name_the_problem_and_leave_the_model_usable(reranker, pairs, error, message):
    with pytest.raises(error, match=message):
        reranker.compute_score(pairs)
    assert reranker.compute_score([("q", "p")]).shape == (1,)


def test_rerank_edge_cases(reranker):
    assert reranker.rerank("what is a panda", []).indices.tolist() == []
    with pytest.raises(TypeError, match="documents must be a list of str, got a single str"):
        reranker.rerank("what is a panda", "a single document")
    with pytest.raises(TypeError, match="query must be a str"):
        reranker.rerank(None, ["a"])
    with pytest.raises(TypeError, match=r"documents\[1\] is NoneType"):
        reranker.rerank("q", ["a", None])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        reranker.rerank("q", ["a"], top_k=0)
    ranking = reranker.rerank("what is a panda", np.array(["a cat", "the panda is a bear"]), top_k=5)
    assert sorted(ranking.indices.tolist()) == [0, 1]
