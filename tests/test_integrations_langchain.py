"""LangChain adapter: langchain-tests' standard suites, and equality with the library it wraps."""

import asyncio

import numpy as np
import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

import bgeort  # noqa: E402
from bgeort.integrations.langchain import BgeortEmbeddings, BgeortRerank  # noqa: E402

pytestmark = pytest.mark.export

TEXTS = ["The giant panda is a bear native to China.", "hello world", "what is a panda?", ""]


class FolderParams:
    """The standard suites build the model from `embedding_model_params`; the folder is a session fixture."""

    folder = None

    @pytest.fixture(autouse=True)
    def _folder(self, tiny_model):
        type(self).folder = tiny_model

    @property
    def embeddings_class(self):
        return BgeortEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_path": self.folder, "threads": 1}


class TestBgeortEmbeddingsUnit(FolderParams, EmbeddingsUnitTests):
    pass


class TestBgeortEmbeddingsIntegration(FolderParams, EmbeddingsIntegrationTests):
    pass


@pytest.fixture(scope="module")
def embedder(tiny_model):
    return bgeort.Embedder(tiny_model, threads=1)


@pytest.fixture(scope="module")
def embeddings(tiny_model):
    return BgeortEmbeddings(tiny_model, threads=1)


def test_documents_equal_encode_corpus(embeddings, embedder):
    got = embeddings.embed_documents(TEXTS)
    assert all(type(value) is float for row in got for value in row)
    np.testing.assert_allclose(np.array(got), embedder.encode_corpus(TEXTS), atol=1e-6, rtol=0)


def test_query_instruction_applied_exactly_once(tiny_model):
    instruction = "Represent this sentence for searching relevant passages: "
    embeddings = BgeortEmbeddings(tiny_model, threads=1, query_instruction_for_retrieval=instruction)
    plain = embeddings.embedder
    got = np.array(embeddings.embed_query("what is a panda?"))
    np.testing.assert_allclose(got, plain.encode(instruction + "what is a panda?"), atol=1e-6, rtol=0)
    assert np.abs(got - plain.encode(2 * instruction + "what is a panda?")).max() > 1e-3
    assert np.abs(got - plain.encode("what is a panda?")).max() > 1e-3


def test_async_paths_equal_sync_and_leave_the_loop_free(embeddings):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        clock = asyncio.ensure_future(ticker())
        documents = await embeddings.aembed_documents(TEXTS * 200)
        query = await embeddings.aembed_query("what is a panda?")
        clock.cancel()
        return documents, query, ticks

    documents, query, ticks = asyncio.run(main())
    assert documents == embeddings.embed_documents(TEXTS * 200)
    assert query == embeddings.embed_query("what is a panda?")
    assert ticks > 1  # the loop ran other work while the model did


def test_bad_input_is_a_clear_error(embeddings):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embeddings.embed_documents(["fine", 3])


def test_rerank_returns_copies_of_the_best_in_the_library_order(bert_reranker):
    docs = [Document(page_content=text, metadata={"n": i}, id=str(i)) for i, text in enumerate(
        ["The giant panda is a bear.", "hi", "Pandas eat bamboo in China.", "a cat on a dog", "bears and pandas"])]
    compressor = BgeortRerank(bert_reranker, threads=1)
    got = compressor.compress_documents(docs, "what is a panda?")
    ranking = bgeort.Reranker(bert_reranker, threads=1).rerank("what is a panda?", [d.page_content for d in docs],
                                                              top_k=3)
    assert [d.metadata["n"] for d in got] == ranking.indices.tolist()
    assert [d.id for d in got] == [str(i) for i in ranking.indices]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in got], ranking.scores, atol=1e-6)
    assert all(type(d.metadata["relevance_score"]) is float for d in got)
    assert all("relevance_score" not in d.metadata for d in docs)  # the caller's documents are untouched
    assert len(BgeortRerank(bert_reranker, top_n=None, threads=1).compress_documents(docs, "panda")) == 5
    assert compressor.compress_documents([], "panda") == []
    assert asyncio.run(compressor.acompress_documents(docs, "what is a panda?")) == got


def test_rerank_rejects_a_bad_top_n(bert_reranker):
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        BgeortRerank(bert_reranker, top_n=0)


def test_missing_extra_names_the_pip_line(monkeypatch):
    import sys

    from bgeort.integrations import require

    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(bgeort.MissingDependencyError, match=r"pip install 'bgeort\[langchain\]'"):
        require("langchain_core")
