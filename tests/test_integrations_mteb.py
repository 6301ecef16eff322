"""mteb adapter: mteb.evaluate on the real MiniLM weights and STS-B (offline) equals bench/eval's score,
and retrieval queries alone get the query instruction."""

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")
pytest.importorskip("datasets")

from mteb.types import PromptType  # noqa: E402

import bgeort  # noqa: E402
from bench import eval_mteb  # noqa: E402
from bgeort.integrations.mteb import BgeortEncoder  # noqa: E402

pytestmark = pytest.mark.export
INSTRUCTION = "Represent this sentence for searching relevant passages: "
TEXTS = ["what is a panda?", "The giant panda is a bear native to China.", "hello world"]


def batches(texts, size=2):
    return [{"text": texts[i:i + size]} for i in range(0, len(texts), size)]


def test_only_retrieval_queries_get_the_instruction(tiny_model):
    encoder = BgeortEncoder(tiny_model, threads=1, query_instruction_for_retrieval=INSTRUCTION)
    plain = bgeort.Embedder(tiny_model, threads=1)
    retrieval, sts = mteb.get_task("SciFact").metadata, mteb.get_task("STSBenchmark").metadata
    common = dict(hf_split="test", hf_subset="default")
    queries = encoder.encode(batches(TEXTS), task_metadata=retrieval, prompt_type=PromptType.query, **common)
    np.testing.assert_allclose(queries, plain.encode([INSTRUCTION + t for t in TEXTS]), atol=1e-6, rtol=0)
    for metadata, prompt in ((retrieval, PromptType.document), (sts, None), (sts, PromptType.query)):
        got = encoder.encode(batches(TEXTS), task_metadata=metadata, prompt_type=prompt, **common)
        np.testing.assert_allclose(got, plain.encode(TEXTS), atol=1e-6, rtol=0)
    meta = encoder.mteb_model_meta
    assert meta.name == f"bgeort/{tiny_model.name}" and meta.embed_dim == plain.dim and meta.framework == ["ONNX"]


@pytest.mark.realweights
@pytest.mark.slow
def test_mteb_evaluate_equals_bench_eval_on_stsb(minilm_model):
    (row,) = eval_mteb.compare(minilm_model, names=["STSBenchmark"], limit=400)
    assert row["agree"], row
    assert 50 < row["mteb"] < 100  # a real model's Spearman on real pairs, not a degenerate run


@pytest.mark.realweights
@pytest.mark.slow
def test_mteb_evaluate_equals_bench_eval_on_a_scifact_slice(minilm_model):
    (row,) = eval_mteb.compare(minilm_model, names=["SciFact"], limit=20)
    assert row["agree"], row
