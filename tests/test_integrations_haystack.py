"""Haystack adapter: real components in a real Pipeline, equal to the library, saved and loaded."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("haystack")

from haystack import Document, Pipeline  # noqa: E402
from haystack.core.errors import DeserializationError  # noqa: E402

import bgeort  # noqa: E402
from bgeort.integrations.haystack import BgeortDocumentEmbedder, BgeortRanker, BgeortTextEmbedder  # noqa: E402

pytestmark = pytest.mark.export

INSTRUCTION = "Represent this sentence for searching relevant passages: "
DOCS = ["The giant panda is a bear.", "hi", "Pandas eat bamboo in China.", "a cat on a dog", "bears and pandas"]


def documents():
    return [Document(id=str(i), content=text, meta={"title": f"title {i}", "n": i}) for i, text in enumerate(DOCS)]


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return bgeort.Embedder(tiny_model, threads=1, query_instruction_for_retrieval=INSTRUCTION)


def test_text_embedder_applies_the_instruction_once(tiny_model, embedder):
    component = BgeortTextEmbedder(tiny_model, threads=1, query_instruction_for_retrieval=INSTRUCTION)
    component.warm_up()
    got = component.run("what is a panda?")["embedding"]
    assert all(type(value) is float for value in got)
    np.testing.assert_allclose(got, embedder.encode(INSTRUCTION + "what is a panda?"), atol=1e-6, rtol=0)
    assert np.abs(np.array(got) - embedder.encode(2 * INSTRUCTION + "what is a panda?")).max() > 1e-3
    assert asyncio.run(component.run_async("what is a panda?"))["embedding"] == got
    with pytest.raises(TypeError, match="BgeortDocumentEmbedder"):
        component.run(["a", "b"])


def test_document_embedder_joins_meta_as_haystack_does(tiny_model, embedder):
    given = documents()
    component = BgeortDocumentEmbedder(tiny_model, threads=1, meta_fields_to_embed=["title", "missing"],
                                       embedding_separator=" | ")
    out = component.run(given)["documents"]  # no warm_up: the first run opens the model
    assert [doc.id for doc in out] == [doc.id for doc in given]
    assert all(doc.embedding is None for doc in given)  # the inputs are not modified
    expected = embedder.encode_corpus([f"title {i} | {text}" for i, text in enumerate(DOCS)])
    np.testing.assert_allclose(np.array([doc.embedding for doc in out]), expected, atol=1e-6, rtol=0)
    assert asyncio.run(component.run_async(given))["documents"] == out
    with pytest.raises(TypeError, match="list of haystack Document"):
        component.run("a string")


def test_ranker_equals_the_library(bert_reranker):
    given = documents()
    ranker = BgeortRanker(bert_reranker, top_k=3, threads=1)
    ranker.warm_up()
    got = ranker.run("what is a panda?", given)["documents"]
    ranking = bgeort.Reranker(bert_reranker, threads=1).rerank("what is a panda?", DOCS, top_k=3)
    assert [doc.id for doc in got] == [str(i) for i in ranking.indices]
    np.testing.assert_allclose([doc.score for doc in got], ranking.scores, atol=1e-6)
    assert all(doc.score is None for doc in given)
    assert len(ranker.run("what is a panda?", given, top_k=5)["documents"]) == 5
    cut = float(ranking.scores[1])
    assert [d.id for d in ranker.run("what is a panda?", given, score_threshold=cut)["documents"]] == [
        str(i) for i in ranking.indices[:2]]
    assert ranker.run("panda", [])["documents"] == []
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ranker.run("panda", given, top_k=0)


def test_pipeline_round_trip_needs_the_allowlist(tiny_model, bert_reranker, embedder):
    pipeline = Pipeline()
    pipeline.add_component("embedder", BgeortDocumentEmbedder(tiny_model, threads=1, meta_fields_to_embed=["title"]))
    pipeline.add_component("ranker", BgeortRanker(bert_reranker, top_k=2, threads=1))
    pipeline.connect("embedder.documents", "ranker.documents")
    saved = pipeline.dumps()
    with pytest.raises(DeserializationError, match="bgeort"):
        Pipeline.loads(saved)
    loaded = Pipeline.loads(saved, allowed_modules=["bgeort.*"])
    assert loaded.to_dict() == pipeline.to_dict()
    out = loaded.run({"embedder": {"documents": documents()}, "ranker": {"query": "what is a panda?"}})
    ranked = out["ranker"]["documents"]
    assert len(ranked) == 2 and all(doc.embedding is not None for doc in ranked)
    expected = embedder.encode_corpus([f"title {doc.meta['n']}\n{doc.content}" for doc in ranked])
    np.testing.assert_allclose(np.array([doc.embedding for doc in ranked]), expected, atol=1e-6, rtol=0)
