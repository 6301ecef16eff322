"""Haystack: `BgeortTextEmbedder`, `BgeortDocumentEmbedder` and `BgeortRanker` components.

    from bgeort.integrations.haystack import BgeortDocumentEmbedder, BgeortRanker, BgeortTextEmbedder
    pipeline.add_component("query_embedder", BgeortTextEmbedder("models/bge-small-en-v1.5"))

Each opens its model in `warm_up()` (a Pipeline calls it; a bare `run` does it on first use). To
load a saved pipeline that names these components, add `"bgeort.*"` to Haystack's deserialization
allowlist (docs/integrations.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Optional

from . import require

require("haystack")

from haystack import Document, component, default_from_dict, default_to_dict  # noqa: E402

from ..embedder import Embedder  # noqa: E402
from ..inputs import positive  # noqa: E402
from ..reranker import Reranker  # noqa: E402


def _texts_to_embed(documents: list[Document], meta_fields: list[str], separator: str) -> list[str]:
    """Each document's chosen meta values, then its content, joined as Haystack's own embedders join them."""
    if not isinstance(documents, list) or not all(isinstance(doc, Document) for doc in documents):
        raise TypeError("documents must be a list of haystack Document; to embed one string use BgeortTextEmbedder")
    return [separator.join([str(doc.meta[key]) for key in meta_fields if doc.meta.get(key) is not None]
                           + [doc.content or ""]) for doc in documents]


class _Model:
    """What the three components share: the folder and options, opened once in warm_up()."""

    opener = Embedder

    def __init__(self, model_path, **options):
        self.model_path = str(model_path)
        self.options = options
        self.model = None

    def warm_up(self) -> None:
        if self.model is None:
            self.model = self.opener(self.model_path, **self.options)

    def _open(self):
        self.warm_up()
        return self.model

    def _to_dict(self, **init_parameters) -> dict[str, Any]:
        return default_to_dict(self, model_path=self.model_path, **init_parameters, **self.options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return default_from_dict(cls, data)


@component
class BgeortTextEmbedder(_Model):
    """Embeds one query string with the manifest's query instruction (`encode_queries`).
    `options` are `bgeort.Embedder`'s (precision, device, threads, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict()

    @component.output_types(embedding=list[float])
    def run(self, text: str) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError("BgeortTextEmbedder embeds one str; to embed Documents use BgeortDocumentEmbedder")
        return {"embedding": self._open().encode_queries(text).tolist()}

    @component.output_types(embedding=list[float])
    async def run_async(self, text: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, text)


@component
class BgeortDocumentEmbedder(_Model):
    """Embeds Documents as passages (`encode_corpus`), the values of `meta_fields_to_embed` first,
    joined by `embedding_separator`; returns copies with `embedding` set (the inputs are not modified)."""

    def __init__(self, model_path, *, meta_fields_to_embed: Optional[list[str]] = None,
                 embedding_separator: str = "\n", **options):
        _Model.__init__(self, model_path, **options)  # @component rebuilds the class: no bare super()
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict(meta_fields_to_embed=self.meta_fields_to_embed,
                             embedding_separator=self.embedding_separator)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        texts = _texts_to_embed(documents, self.meta_fields_to_embed, self.embedding_separator)
        vectors = self._open().encode_corpus(texts).tolist()
        return {"documents": [replace(doc, embedding=vector) for doc, vector in zip(documents, vectors)]}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, documents)


@component
class BgeortRanker(_Model):
    """Reranks Documents for a query with a bge-reranker cross-encoder: copies of the best `top_k`,
    best first, with `score` set (the sigmoid of the logit when `scale_score`, else the logit);
    `score_threshold` drops those below it. `options` are `bgeort.Reranker`'s."""

    opener = Reranker

    def __init__(self, model_path, *, top_k: int = 10, scale_score: bool = True,
                 score_threshold: Optional[float] = None, meta_fields_to_embed: Optional[list[str]] = None,
                 embedding_separator: str = "\n", **options):
        _Model.__init__(self, model_path, **options)  # @component rebuilds the class: no bare super()
        self.top_k = positive("top_k", top_k)
        self.scale_score = scale_score
        self.score_threshold = score_threshold
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict(top_k=self.top_k, scale_score=self.scale_score, score_threshold=self.score_threshold,
                             meta_fields_to_embed=self.meta_fields_to_embed,
                             embedding_separator=self.embedding_separator)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: Optional[int] = None,
            score_threshold: Optional[float] = None) -> dict[str, Any]:
        texts = _texts_to_embed(documents, self.meta_fields_to_embed, self.embedding_separator)
        if not documents:
            return {"documents": []}
        top_k = self.top_k if top_k is None else positive("top_k", top_k)
        threshold = self.score_threshold if score_threshold is None else score_threshold
        ranking = self._open().rerank(query, texts, top_k=top_k, normalize=self.scale_score)
        ranked = [replace(documents[index], score=score)
                  for index, score in zip(ranking.indices.tolist(), ranking.scores.tolist())]
        return {"documents": [doc for doc in ranked if threshold is None or doc.score >= threshold]}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: Optional[int] = None,
                        score_threshold: Optional[float] = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, query, documents, top_k, score_threshold)
