"""LangChain: `BgeortEmbeddings` (an `Embeddings`) and `BgeortRerank` (a `BaseDocumentCompressor`).

    from bgeort.integrations.langchain import BgeortEmbeddings, BgeortRerank
    embeddings = BgeortEmbeddings("models/bge-small-en-v1.5")
    compressor = BgeortRerank("models/bge-reranker-base", top_n=3)
"""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

from . import require

require("langchain_core")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402
from pydantic import ConfigDict, PrivateAttr  # noqa: E402

from ..embedder import Embedder  # noqa: E402
from ..inputs import positive  # noqa: E402
from ..reranker import Reranker  # noqa: E402


class BgeortEmbeddings(Embeddings):
    """An exported embedding model as LangChain `Embeddings`: documents through `encode_corpus`,
    queries through `encode_queries` (the manifest's query instruction, prepended once).

    `options` are `bgeort.Embedder`'s (precision, device, threads, batch_size, ...)."""

    def __init__(self, model_path, **options):
        self.embedder = Embedder(model_path, **options)

    def __repr__(self) -> str:
        return f"BgeortEmbeddings({self.embedder!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.encode_corpus(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.encode_queries(text).tolist()

    # onnxruntime and tokenizers release the GIL, so a worker thread keeps the event loop free.
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


class BgeortRerank(BaseDocumentCompressor):
    """A bge-reranker cross-encoder as a LangChain document compressor (for
    `ContextualCompressionRetriever`): the best `top_n` documents, best first, copied with
    `metadata["relevance_score"]` (the sigmoid of the logit, in (0, 1)), as Jina's and Flashrank's
    rerankers return them. `options` are `bgeort.Reranker`'s."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    top_n: Optional[int] = 3
    _reranker: Reranker = PrivateAttr()

    def __init__(self, model_path, *, top_n: Optional[int] = 3, **options):
        if top_n is not None:
            positive("top_n", top_n)
        super().__init__(model_path=str(model_path), top_n=top_n)
        self._reranker = Reranker(model_path, **options)

    @property
    def reranker(self) -> Reranker:
        return self._reranker

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Optional[Callbacks] = None) -> Sequence[Document]:
        documents = list(documents)
        if not documents:
            return []
        ranking = self._reranker.rerank(query, [doc.page_content for doc in documents], top_k=self.top_n)
        return [documents[index].model_copy(update={"metadata": {**documents[index].metadata,
                                                                 "relevance_score": float(score)}})
                for index, score in zip(ranking.indices.tolist(), ranking.scores.tolist())]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Optional[Callbacks] = None) -> Sequence[Document]:
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
