"""Real weights: all-MiniLM-L6-v2 (bge-small's width, heads, FFN and vocabulary) exported and
checked against PyTorch and against its published MTEB STS-B score."""

import csv
import gzip
import json
import warnings

import numpy as np
import pytest

import bgeort
from bgeort.errors import TruncationWarning
from tests.conftest import DATA, MINILM

pytestmark = [pytest.mark.export, pytest.mark.realweights, pytest.mark.slow]

# embeddings-benchmark/results, sentence-transformers__all-MiniLM-L6-v2, STSBenchmark test,
# cosine_spearman, mteb 1.12.75 (../shared/data/README.md)
PUBLISHED_STSB = 82.03247283076371


def stsb_test():
    with open(DATA / "stsb" / "stsb-en-test.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    return [r[0] for r in rows], [r[1] for r in rows], np.array([float(r[2]) for r in rows])


def scifact_abstracts(n):
    texts = []
    with gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as stream:
        for line in stream:
            doc = json.loads(line)
            texts.append((doc.get("title", "") + " " + doc["text"]).strip())
            if len(texts) == n:
                break
    return texts


def reference_vectors(texts, max_length=256):
    """sentence-transformers' computation, written out: HF tokenizer at 256 tokens, PyTorch fp32,
    mean pooling over real tokens, L2 normalization."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    model = AutoModel.from_pretrained(str(MINILM)).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(vectors, dim=1).numpy())
    return np.concatenate(rows)


def mteb_sts_spearman(a, b, gold):
    """MTEB's STSEvaluator: 1 - paired cosine distance (sklearn's formula, float64), Spearman x 100."""
    from scipy.stats import spearmanr

    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    cosine = 1 - 0.5 * np.sum((a - b) ** 2, axis=1)
    return 100 * spearmanr(gold, cosine)[0]


def test_manifest_resolves_the_source_conflicts(minilm_model):
    manifest = bgeort.load_manifest(minilm_model)
    assert (manifest.pooling, manifest.max_length, manifest.normalize) == ("mean", 256, True)
    found = manifest.provenance["settings_from"]["found_in_source"]
    assert found["tokenizer.json truncation"]["max_length"] == 128
    assert found["tokenizer_config.json model_max_length"] == 512


def test_real_sized_graphs_keep_their_weights_in_a_data_file(minilm_model):
    """Every variant of a real model (all past 16 MiB of weights) is a graph plus one data file that
    onnxruntime memory-maps, both hashed in the manifest; the graph file itself holds no weights."""
    manifest = bgeort.load_manifest(minilm_model)
    for name, variant in manifest.variants.items():
        data = minilm_model / variant.data_file
        assert variant.data_file == variant.file + ".data" and data.stat().st_size == variant.data_bytes, name
        assert variant.data_bytes > 16 * 2**20 > 100 * variant.bytes, name
        assert bgeort.manifest.sha256_file(data) == variant.data_sha256, name


def test_fp32_matches_pytorch_on_real_sentences_and_long_abstracts(minilm_model):
    s1, _, _ = stsb_test()
    texts = s1[:200] + scifact_abstracts(40)  # abstracts run past 128 and often past 256 tokens
    model = bgeort.Embedder(minilm_model, precision="fp32")
    counts = model.token_counts(texts)
    assert (counts > 128).sum() >= 30  # the baked-in 128 truncation would change these
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        ours = model.encode(texts)
    reference = reference_vectors(texts)
    assert np.abs(ours - reference).max() <= 1e-4
    assert (ours * reference).sum(axis=1).min() >= 0.99999


def test_stsb_reproduces_the_published_mteb_score(minilm_model):
    s1, s2, gold = stsb_test()
    fp32 = bgeort.Embedder(minilm_model, precision="fp32")
    fp32_score = mteb_sts_spearman(fp32.encode(s1), fp32.encode(s2), gold)
    assert abs(fp32_score - PUBLISHED_STSB) <= 0.01, fp32_score
    int8 = bgeort.Embedder(minilm_model, precision="int8")
    int8_score = mteb_sts_spearman(int8.encode(s1), int8.encode(s2), gold)
    assert abs(int8_score - PUBLISHED_STSB) <= 0.5, int8_score


def test_int8_vector_is_the_same_alone_and_in_a_batch(minilm_model):
    """Per-token activation scales: a sentence's int8 vector does not move with the other sentences
    of its batch (a per-batch scale, as quantize_dynamic writes, gave cosine 0.9897 here)."""
    s1, _, _ = stsb_test()
    texts = s1[:64]
    int8 = bgeort.Embedder(minilm_model, precision="int8")
    batched = int8.encode(texts, batch_size=32)
    alone = np.concatenate([int8.encode([t]) for t in texts])
    assert (alone * batched).sum(axis=1).min() >= 0.99999
    assert (batched * reference_vectors(texts)).sum(axis=1).mean() >= 0.99  # PyTorch fp32


def test_mteb_formula_on_a_hand_computed_case():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # cosines 1, 0.7071, 0 against gold 3, 2, 1: perfectly monotone
    assert mteb_sts_spearman(a, b, np.array([3.0, 2.0, 1.0])) == pytest.approx(100.0)
    assert mteb_sts_spearman(a, b, np.array([1.0, 2.0, 3.0])) == pytest.approx(-100.0)
