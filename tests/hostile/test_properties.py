"""Property-based: for any str, an embedding exists, has the right shape and dtype, is finite and of
unit norm, and does not depend on its batch neighbours, their order, or the batch size settings."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import bgeort  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::bgeort.TruncationWarning")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# every code point but lone surrogates, which are not text (test_inputs.py checks their error)
TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)


@pytest.fixture(scope="module")
def models(tiny_model, bert_reranker):
    return (bgeort.Embedder(tiny_model), bgeort.Embedder(tiny_model, batch_size=3, max_batch_tokens=40),
            bgeort.Reranker(bert_reranker))


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=12))
def test_any_text_embeds_the_same_in_any_batch(models, texts):
    embedder, small_batches, _ = models
    vectors = embedder.encode(texts)
    assert vectors.shape == (len(texts), embedder.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(small_batches.encode(texts), vectors, atol=2e-6)
    np.testing.assert_allclose(embedder.encode(texts[::-1])[::-1], vectors, atol=2e-6)
    np.testing.assert_allclose(embedder.encode([texts[0]])[0], vectors[0], atol=2e-6)


@SETTINGS
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8))
def test_any_pair_scores_the_same_in_any_batch(models, pairs):
    _, _, reranker = models
    scores = reranker.compute_score(pairs)
    assert scores.shape == (len(pairs),) and scores.dtype == np.float32 and np.isfinite(scores).all()
    np.testing.assert_allclose(reranker.compute_score(pairs[::-1])[::-1], scores, atol=2e-5)
    assert reranker.compute_score(pairs[0]) == pytest.approx(float(scores[0]), abs=2e-5)


@pytest.fixture(scope="module")
def m3_models(m3_model):
    return (bgeort.M3Embedder(m3_model, precision="fp32"),
            bgeort.M3Embedder(m3_model, precision="fp32", batch_size=3, max_batch_tokens=40))


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=8))
def test_any_text_gives_all_three_m3_outputs_the_same_in_any_batch(m3_models, texts):
    model, small_batches = m3_models
    out = model.encode(texts, return_sparse=True, return_colbert_vecs=True)
    counts = np.minimum(model.token_counts(texts), model.max_length)
    assert out["dense_vecs"].shape == (len(texts), model.dim) and np.isfinite(out["dense_vecs"]).all()
    np.testing.assert_allclose(np.linalg.norm(out["dense_vecs"], axis=1), 1.0, atol=1e-5)
    for vectors, count, weights in zip(out["colbert_vecs"], counts, out["lexical_weights"]):
        assert vectors.shape == (count - 1, model.colbert_dim) and np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert all(np.isfinite(w) and w > 0 for w in weights.values())
    other = small_batches.encode(texts[::-1], return_sparse=True, return_colbert_vecs=True)
    np.testing.assert_allclose(other["dense_vecs"][::-1], out["dense_vecs"], atol=2e-6)
    for ours, theirs in zip(out["colbert_vecs"], other["colbert_vecs"][::-1]):
        np.testing.assert_allclose(ours, theirs, atol=2e-5)
    for ours, theirs in zip(out["lexical_weights"], other["lexical_weights"][::-1]):
        assert ours.keys() == theirs.keys()
        np.testing.assert_allclose([ours[k] for k in ours], [theirs[k] for k in ours], atol=2e-5)
