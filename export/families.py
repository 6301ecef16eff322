"""The table of supported model families: one row per model, nothing per model anywhere else.

A source that matches no row takes the generic path, which reads pooling, normalization and max
length from its sentence-transformers files (see `source.read_sentence_transformers`).
"""

from __future__ import annotations

from dataclasses import dataclass

EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
# As printed in the BGE model card (ASCII colon).
ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章:"


@dataclass(frozen=True)
class Family:
    name: str  # also the default folder name under models/
    hub_id: str
    kind: str  # "embedder" or "reranker"
    pooling: str  # "cls" or "mean"; "none" for rerankers
    normalize: bool
    max_length: int
    query_instruction: str = ""
    passage_instruction: str = ""
    heads: str = ""  # "m3": bge-m3's sparse and ColBERT heads beside the dense vector (export/m3.py)


def _bge(size: str, language: str) -> Family:
    instruction = EN_QUERY_INSTRUCTION if language == "en" else ZH_QUERY_INSTRUCTION
    name = f"bge-{size}-{language}-v1.5"
    return Family(name=name, hub_id=f"BAAI/{name}", kind="embedder", pooling="cls", normalize=True,
                  max_length=512, query_instruction=instruction)


def _reranker(name: str, max_length: int) -> Family:
    # Cross-encoders: one logit per (query, passage) pair, no pooling or normalization of vectors.
    return Family(name=name, hub_id=f"BAAI/{name}", kind="reranker", pooling="none", normalize=False,
                  max_length=max_length)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        *(_bge(size, language) for language in ("en", "zh") for size in ("small", "base", "large")),
        # XLM-RoBERTa, 8194 positions: 8192 tokens; no instruction (the model card: none needed)
        Family(name="bge-m3", hub_id="BAAI/bge-m3", kind="embedder", pooling="cls", normalize=True,
               max_length=8192, heads="m3"),
        _reranker("bge-reranker-base", 512),
        _reranker("bge-reranker-large", 512),
        # bge-m3's backbone: 8194 positions, so 8192 tokens of pair (FlagReranker's default call uses 512)
        _reranker("bge-reranker-v2-m3", 8192),
    ]
}

DEFAULT_SOURCE = FAMILIES["bge-small-en-v1.5"].hub_id


def find_family(source: str, family: str | None = None) -> Family | None:
    """The row for an explicit family name, else the row whose name or hub id the source ends with."""
    if family is not None:
        try:
            return FAMILIES[family]
        except KeyError:
            raise ValueError(
                f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))} "
                "(leave --family out to export any BERT sentence-transformers folder generically)"
            ) from None
    tail = source.rstrip("/").split("/")[-1].lower()
    for row in FAMILIES.values():
        if tail == row.name.lower() or source.lower() == row.hub_id.lower():
            return row
    return None
