"""LlamaIndex adapter: equality with the library it wraps, through LlamaIndex's own public methods."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode  # noqa: E402

import bgeort  # noqa: E402
from bgeort.integrations.llama_index import EMBED_BATCH_SIZE, BgeortEmbedding, BgeortRerank  # noqa: E402

pytestmark = pytest.mark.export

TEXTS = ["The giant panda is a bear native to China.", "hello world", "what is a panda?", ""]
INSTRUCTION = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return bgeort.Embedder(tiny_model, threads=1, query_instruction_for_retrieval=INSTRUCTION)


@pytest.fixture(scope="module")
def embed_model(tiny_model):
    return BgeortEmbedding(tiny_model, threads=1, query_instruction_for_retrieval=INSTRUCTION)


def test_text_embeddings_equal_encode_corpus(embed_model, embedder):
    assert embed_model.embed_batch_size == EMBED_BATCH_SIZE
    batch = embed_model.get_text_embedding_batch(TEXTS * 3)
    assert all(type(value) is float for row in batch for value in row)
    np.testing.assert_allclose(np.array(batch), embedder.encode_corpus(TEXTS * 3), atol=1e-6, rtol=0)
    np.testing.assert_allclose(embed_model.get_text_embedding(TEXTS[0]), embedder.encode_corpus(TEXTS[0]),
                               atol=1e-6, rtol=0)


def test_small_batches_give_the_same_vectors(tiny_model, embedder):
    model = BgeortEmbedding(tiny_model, threads=1, embed_batch_size=3)
    np.testing.assert_allclose(np.array(model.get_text_embedding_batch(TEXTS * 3)), embedder.encode_corpus(TEXTS * 3),
                               atol=1e-6, rtol=0)


def test_query_instruction_applied_exactly_once(embed_model, embedder):
    got = np.array(embed_model.get_query_embedding("what is a panda?"))
    np.testing.assert_allclose(got, embedder.encode(INSTRUCTION + "what is a panda?"), atol=1e-6, rtol=0)
    assert np.abs(got - embedder.encode(2 * INSTRUCTION + "what is a panda?")).max() > 1e-3
    # LlamaIndex's agg embedding goes through the same hook
    np.testing.assert_allclose(embed_model.get_agg_embedding_from_queries(["what is a panda?"]), got, atol=1e-6)


def test_async_paths_equal_sync(embed_model):
    async def main():
        return (await embed_model.aget_query_embedding("panda"), await embed_model.aget_text_embedding("bear"),
                await embed_model.aget_text_embedding_batch(TEXTS))

    query, text, batch = asyncio.run(main())
    assert query == embed_model.get_query_embedding("panda")
    assert text == embed_model.get_text_embedding("bear")
    assert batch == embed_model.get_text_embedding_batch(TEXTS)


def nodes():
    texts = ["The giant panda is a bear.", "hi", "Pandas eat bamboo in China.", "a cat on a dog", "bears and pandas"]
    return [NodeWithScore(node=TextNode(text=text, id_=str(i), metadata={"n": i}), score=0.1 * i)
            for i, text in enumerate(texts)]


def test_rerank_keeps_the_library_order(bert_reranker):
    given = nodes()
    reranker = BgeortRerank(bert_reranker, top_n=3, keep_retrieval_score=True, threads=1)
    got = reranker.postprocess_nodes(given, query_str="what is a panda?")
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in given]
    ranking = bgeort.Reranker(bert_reranker, threads=1).rerank("what is a panda?", contents, top_k=3)
    assert [n.node.node_id for n in got] == [str(i) for i in ranking.indices]
    np.testing.assert_allclose([n.score for n in got], ranking.scores, atol=1e-6)
    assert [n.node.metadata["retrieval_score"] for n in got] == [0.1 * i for i in ranking.indices]
    assert [n.score for n in given] == [0.1 * i for i in range(5)]  # the caller's nodes are untouched
    assert all("retrieval_score" not in n.node.metadata for n in given)
    bundle = reranker.postprocess_nodes(given, query_bundle=QueryBundle("what is a panda?"))
    assert [n.node.node_id for n in bundle] == [n.node.node_id for n in got]
    assert reranker.postprocess_nodes([], query_str="panda") == []


def test_rerank_without_a_query_is_a_clear_error(bert_reranker):
    with pytest.raises(ValueError, match="needs the query"):
        BgeortRerank(bert_reranker, threads=1).postprocess_nodes(nodes())
