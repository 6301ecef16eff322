"""Pooling and normalization of token states, in numpy."""

from __future__ import annotations

import numpy as np


def cls_pool(hidden: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """The first token's state: BGE's sentence vector. (batch, seq, dim) -> (batch, dim)."""
    return hidden[:, 0]


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean of the states of real (unpadded) tokens, as sentence-transformers computes it."""
    mask = attention_mask.astype(hidden.dtype)[:, :, None]
    counts = np.maximum(mask.sum(axis=1), 1e-9)
    return (hidden * mask).sum(axis=1) / counts


POOLERS = {"cls": cls_pool, "mean": mean_pool}


def pool(hidden: np.ndarray, attention_mask: np.ndarray, method: str) -> np.ndarray:
    try:
        pooler = POOLERS[method]
    except KeyError:
        raise ValueError(f"unknown pooling {method!r}; expected one of {sorted(POOLERS)}") from None
    return pooler(hidden, attention_mask)


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)
