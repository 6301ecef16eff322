"""Stored-vector types: the layouts of sentence-transformers' quantize_embeddings, int8/uint8 ranges
measured at export, so a single query quantizes as it does in a batch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import bgeort
from bgeort.quantize import OUTPUT_DTYPES, quantize

QUERIES = ["what is a panda?", "how tall is the eiffel tower", "python sort a list", "A man plays a guitar."]


def reference(vectors: np.ndarray, dtype: str, ranges: np.ndarray) -> np.ndarray:
    """sentence-transformers' quantize_embeddings, written from its documented definition (with the
    ranges given, as its `ranges=` argument takes them: row 0 the minima, row 1 the maxima)."""
    if dtype == "ubinary":
        return np.packbits(vectors > 0).reshape(vectors.shape[0], -1)
    if dtype == "binary":
        return (np.packbits(vectors > 0).reshape(vectors.shape[0], -1) - 128).astype(np.int8)
    starts, steps = ranges[0], (ranges[1] - ranges[0]) / 255
    if dtype == "uint8":
        return ((vectors - starts) / steps).astype(np.uint8)
    return ((vectors - starts) / steps - 128).astype(np.int8)


def test_export_stores_ranges_of_the_calibration_corpus(tiny_model):
    from export.calibration import calibration_texts

    model = bgeort.Embedder(tiny_model)
    ranges = model.manifest.quantization_ranges
    assert ranges["texts"] == len(calibration_texts()) and len(ranges["min"]) == len(ranges["max"]) == model.dim
    vectors = bgeort.Embedder(tiny_model, precision="fp32").encode_corpus(calibration_texts())
    np.testing.assert_allclose(ranges["min"], vectors.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(ranges["max"], vectors.max(axis=0), atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_stored_types_have_sentence_transformers_layouts(tiny_model, dtype):
    model = bgeort.Embedder(tiny_model)
    ranges = model.manifest.quantization_ranges
    vectors = model.encode(QUERIES)
    inside = np.clip(vectors, ranges["min"], ranges["max"])  # outside the range we clip where it would wrap
    got = model.quantize(inside, dtype)
    np.testing.assert_array_equal(got, reference(inside, dtype, np.array([ranges["min"], ranges["max"]],
                                                                          dtype=np.float32)))
    np.testing.assert_array_equal(model.encode(QUERIES, output_dtype=dtype), model.quantize(vectors, dtype))


@pytest.mark.parametrize("dtype", OUTPUT_DTYPES)
def test_a_single_query_quantizes_as_in_a_batch(tiny_model, dtype):
    model = bgeort.Embedder(tiny_model)
    batch = model.encode_queries(QUERIES, output_dtype=dtype)
    alone = model.encode_queries(QUERIES[0], output_dtype=dtype)
    assert alone.dtype == batch.dtype and alone.shape == batch.shape[1:]
    np.testing.assert_array_equal(alone, batch[0])
    rows = np.stack(list(model.encode_iter(QUERIES, output_dtype=dtype, instruction=model.query_instruction)))
    np.testing.assert_array_equal(rows, batch)


def test_stored_types_round_trip(tiny_model):
    model = bgeort.Embedder(tiny_model)
    vectors = model.encode_corpus(QUERIES)
    np.testing.assert_allclose(model.encode_corpus(QUERIES, output_dtype="float16").astype(np.float32), vectors,
                               atol=1e-3)
    ranges = model.manifest.quantization_ranges
    starts, steps = np.array(ranges["min"]), (np.array(ranges["max"]) - np.array(ranges["min"])) / 255
    inside = np.clip(vectors, ranges["min"], ranges["max"])
    for dtype, offset in (("int8", 128), ("uint8", 0)):
        levels = model.quantize(inside, dtype).astype(np.float64) + offset
        back = starts + levels * steps  # each value within one step of its original (cast truncates to 0)
        assert np.all(np.abs(inside - back) <= steps * (1 + 1e-5) + 1e-7)
    bits = np.unpackbits(model.quantize(vectors, "ubinary"), axis=-1)[:, :model.dim]
    np.testing.assert_array_equal(bits.astype(bool), vectors > 0)
    signed = model.quantize(vectors, "binary").astype(np.int16) + 128
    np.testing.assert_array_equal(signed, model.quantize(vectors, "ubinary"))
    with pytest.raises(ValueError, match="unknown output_dtype 'int4'"):
        model.encode("x", output_dtype="int4")


def test_a_folder_without_ranges_names_the_re_export(tiny_model, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(tiny_model, folder)
    data = json.loads((folder / "bgeort.json").read_text())
    del data["quantization_ranges"]
    (folder / "bgeort.json").write_text(json.dumps(data))
    model = bgeort.Embedder(folder)
    with pytest.raises(bgeort.ModelFolderError, match=r"Re-export it to add them: make export SOURCE="):
        model.encode("x", output_dtype="int8")
    assert model.encode(["x"], output_dtype="binary").shape == (1, (model.dim + 7) // 8)  # no ranges needed
    data["quantization_ranges"] = {"min": [0.0], "max": [1.0], "corpus": "x", "texts": 1}
    (folder / "bgeort.json").write_text(json.dumps(data))
    with pytest.raises(bgeort.ModelFolderError, match="must be 32 finite numbers"):
        bgeort.Embedder(folder)


def test_cli_int8_output_equals_the_library(tiny_model, tmp_path):
    import subprocess
    import sys

    source = tmp_path / "in.txt"
    source.write_text("\n".join(QUERIES) + "\n")
    out = tmp_path / "out.npy"
    done = subprocess.run([sys.executable, "-m", "bgeort", "embed", str(tiny_model), str(source), "-o", str(out),
                           "--output-dtype", "int8", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stored = np.load(out)
    assert stored.dtype == np.int8
    np.testing.assert_array_equal(stored, bgeort.Embedder(tiny_model).encode_corpus(QUERIES, output_dtype="int8"))
    assert quantize(np.zeros((1, 8), dtype=np.float32), "ubinary").shape == (1, 1)
