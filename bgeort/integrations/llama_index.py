"""LlamaIndex: `BgeortEmbedding` (a `BaseEmbedding`) and `BgeortRerank` (a `BaseNodePostprocessor`).

    from bgeort.integrations.llama_index import BgeortEmbedding, BgeortRerank
    Settings.embed_model = BgeortEmbedding("models/bge-small-en-v1.5")
    reranker = BgeortRerank("models/bge-reranker-base", top_n=2)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import List, Optional

from . import require

require("llama_index.core")

from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.bridge.pydantic import PrivateAttr  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

from ..embedder import Embedder  # noqa: E402
from ..inputs import positive  # noqa: E402
from ..reranker import Reranker  # noqa: E402

# LlamaIndex cuts its inputs into calls of embed_batch_size texts (its default, 10, suits web APIs).
# The Embedder sorts each call by length and batches it by tokens itself, so bigger calls pad less;
# 1,024 keeps LlamaIndex's progress bar moving (its cap is 2,048).
EMBED_BATCH_SIZE = 1024


class BgeortEmbedding(BaseEmbedding):
    """An exported embedding model as a LlamaIndex embedding: queries through `encode_queries`
    (the manifest's query instruction, once), texts through `encode_corpus`.
    `options` are `bgeort.Embedder`'s (precision, device, threads, batch_size, ...)."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, model_path, *, embed_batch_size: int = EMBED_BATCH_SIZE, callback_manager=None, **options):
        super().__init__(model_name=Path(model_path).name, embed_batch_size=embed_batch_size,
                         callback_manager=callback_manager)
        self._embedder = Embedder(model_path, **options)

    @classmethod
    def class_name(cls) -> str:
        return "BgeortEmbedding"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _get_query_embedding(self, query: str) -> List[float]:
        return self._embedder.encode_queries(query).tolist()

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._embedder.encode_corpus(text).tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return self._embedder.encode_corpus(list(texts)).tolist()

    # onnxruntime and tokenizers release the GIL, so a worker thread keeps the event loop free.
    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class BgeortRerank(BaseNodePostprocessor):
    """A bge-reranker cross-encoder as a LlamaIndex node postprocessor, as `SentenceTransformerRerank`:
    scores (query, node content) pairs and keeps the best `top_n`, best first, with the score (the
    sigmoid of the logit) as each node's score; `keep_retrieval_score` keeps the old one in the node's
    metadata. The nodes passed in are not modified. `options` are `bgeort.Reranker`'s."""

    model: str
    top_n: int = 2
    keep_retrieval_score: bool = False
    _reranker: Reranker = PrivateAttr()

    def __init__(self, model_path, *, top_n: int = 2, keep_retrieval_score: bool = False, **options):
        super().__init__(model=str(model_path), top_n=positive("top_n", top_n),
                         keep_retrieval_score=keep_retrieval_score)
        self._reranker = Reranker(model_path, **options)

    @classmethod
    def class_name(cls) -> str:
        return "BgeortRerank"

    @property
    def reranker(self) -> Reranker:
        return self._reranker

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("BgeortRerank needs the query: call postprocess_nodes(nodes, query_str=...) "
                             "or query_bundle=QueryBundle(...)")
        if not nodes:
            return []
        contents = [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
        ranking = self._reranker.rerank(query_bundle.query_str, contents, top_k=self.top_n)
        ranked = []
        for index, score in zip(ranking.indices.tolist(), ranking.scores.tolist()):
            node = nodes[index].node
            if self.keep_retrieval_score:
                node = node.model_copy(update={"metadata": {**node.metadata, "retrieval_score": nodes[index].score}})
            ranked.append(NodeWithScore(node=node, score=score))
        return ranked
