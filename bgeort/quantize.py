"""Stored-vector types: float32 vectors made compact for a vector store (numpy only).

The types and their bit layouts are sentence-transformers' `quantize_embeddings` ones, so stored
vectors load into the same tools: int8/uint8 scale each dimension's [min, max] onto 256 steps,
binary/ubinary keep the sign bits packed 8 to a byte (binary as int8, offset by -128). The int8/uint8
ranges are not taken from the batch (sentence-transformers' default, which breaks on a single query:
its issue 2837) but from the model folder's manifest, measured at export on a fixed corpus
(export/calibration.py), so a vector quantizes the same alone or in any batch.
"""

from __future__ import annotations

import numpy as np

from .errors import ModelFolderError

OUTPUT_DTYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def check_output_dtype(output_dtype: str) -> str:
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"unknown output_dtype {output_dtype!r}; use one of {OUTPUT_DTYPES}")
    return output_dtype


def stored_width(output_dtype: str, dim: int) -> int:
    """Values per stored vector: dim, or dim / 8 bytes (rounded up) for the packed bit types."""
    return (dim + 7) // 8 if output_dtype in ("binary", "ubinary") else dim


def stored_numpy_dtype(output_dtype: str) -> np.dtype:
    return np.dtype({"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
                     "binary": np.int8, "ubinary": np.uint8}[output_dtype])


def quantize(vectors: np.ndarray, output_dtype: str, *, ranges: dict | None = None, hint: str = "") -> np.ndarray:
    """float32 (N, dim) -> (N, stored_width) of stored_numpy_dtype. `ranges` is the manifest's
    quantization_ranges (needed for int8/uint8; `hint` names the re-export command when it is missing)."""
    check_output_dtype(output_dtype)
    if output_dtype == "float32":
        return vectors
    if output_dtype == "float16":
        return vectors.astype(np.float16)
    if output_dtype in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if output_dtype == "binary" else packed
    if ranges is None:
        raise ModelFolderError(
            f"output_dtype={output_dtype!r} needs per-dimension ranges measured at export, and this model "
            f"folder has none (exported before bgeort stored them). Re-export it to add them: {hint}; "
            "or store 'float16' or 'binary', which need no ranges"
        )
    starts = np.asarray(ranges["min"], dtype=np.float32)
    steps = (np.asarray(ranges["max"], dtype=np.float32) - starts) / 255
    steps[steps == 0] = 1.0  # a constant dimension: every value lands on step 0
    # values outside the calibration range are clipped to its ends (sentence-transformers lets them wrap)
    levels = np.clip((vectors - starts) / steps, 0, 255)
    return (levels - 128).astype(np.int8) if output_dtype == "int8" else levels.astype(np.uint8)


def calibration_ranges(vectors: np.ndarray, *, corpus: str) -> dict:
    """The manifest's quantization_ranges from float32 vectors of the calibration corpus."""
    return {"min": [float(v) for v in vectors.min(axis=0)], "max": [float(v) for v in vectors.max(axis=0)],
            "corpus": corpus, "texts": int(len(vectors))}
