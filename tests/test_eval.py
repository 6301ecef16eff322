"""bench/eval: the metric code against hand-computed values, and a reduced eval of the MiniLM export.

The full report (bench/results/eval-minilm.md) takes many minutes; here each metric is checked on
inputs small enough to work out by hand, and a few hundred real pairs go through bgeort and the
PyTorch reference.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.eval import data, metrics, report, tasks
from bench.eval.published import PUBLISHED

from .conftest import ROOT

LOG3 = 1 / math.log2(3)  # the discount of rank 2


# STS: MTEB's cosine and Spearman


def test_paired_cosine_is_sklearns_formula():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [0.1, 0.2]])
    b = np.array([[4.0, 3.0], [0.0, 2.0], [-5.0, 0.0], [0.1, 0.2]])
    # 24/25; orthogonal; opposite; identical (exactly 1.0, so identical pairs tie)
    assert metrics.paired_cosine(a, b).tolist() == pytest.approx([0.96, 0.0, -1.0, 1.0], abs=1e-15)
    assert metrics.paired_cosine(a[3:], b[3:])[0] == 1.0
    assert metrics.paired_cosine(a, b).dtype == np.float64


def test_identical_sentences_tie_where_a_dot_product_would_not():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 384)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert np.all(metrics.paired_cosine(v, v) == 1.0)  # a float32 dot product gives 1 ± 1e-7


def test_spearman_uses_average_ranks_for_ties():
    # score ranks 1, 2.5, 2.5, 4 against 1..4: rho = 4.5 / sqrt(5 * 4.5) = 3 / sqrt(10)
    assert metrics.sts_spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.4, 0.4, 0.9]) == pytest.approx(3 / math.sqrt(10))
    assert metrics.sts_spearman([0.0, 5.0, 2.0], [0.1, 0.3, 0.2]) == pytest.approx(1.0)


# Retrieval: pytrec_eval semantics


def test_trec_order_breaks_score_ties_by_doc_id_descending():
    assert metrics.trec_order(["a", "c", "b", "d"], [0.5, 0.5, 0.9, 0.1]) == ["b", "c", "a", "d"]


def test_ndcg_at_10_by_hand():
    ranked = ["d1", "d2", "d3"]
    # binary: DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    assert metrics.ndcg_at_k(ranked, {"d2": 1, "d3": 1}, 10) == pytest.approx((LOG3 + 0.5) / (1 + LOG3))
    assert metrics.ndcg_at_k(ranked, {"d2": 1, "d3": 1}, 10) == pytest.approx(0.6934264036172708)
    # graded: DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3)
    assert metrics.ndcg_at_k(["d2", "d1"], {"d1": 2, "d2": 1}, 10) == pytest.approx(0.8597186998521972)
    # a relevant document at rank 11 is past the cut; one never retrieved still counts in the ideal
    eleven = [f"x{i}" for i in range(10)] + ["d1"]
    assert metrics.ndcg_at_k(eleven, {"d1": 1}, 10) == 0.0
    assert metrics.ndcg_at_k(["d1"], {"d1": 1, "d9": 1}, 10) == pytest.approx(1 / (1 + LOG3))
    assert metrics.ndcg_at_k(["d1"], {"d1": 0}, 10) == 0.0


def test_recall_at_100_by_hand():
    ranked = ["a"] + [f"x{i}" for i in range(99)] + ["b"]  # b at rank 101
    assert metrics.recall_at_k(ranked, {"a": 1, "b": 1, "c": 0}, 100) == 0.5
    assert metrics.recall_at_k(ranked, {"a": 1, "b": 1}, 101) == 1.0


def test_mean_over_queries_averages_judged_queries_and_rounds_like_mteb():
    run = {"q1": ["d1"], "q2": ["x", "d2"], "q3": ["d3"]}  # q3 has no judgments: not evaluated
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    assert metrics.mean_over_queries(metrics.ndcg_at_k, run, qrels, 10) == round((1 + LOG3) / 2, 5)


def test_top_k_and_retrieve_rank_by_cosine():
    docs = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    best, scores = metrics.top_k(np.array([[0.0, 2.0]], dtype=np.float32), docs, 2)
    assert sorted(best[0].tolist()) == [1, 2]
    assert sorted(scores[0].tolist()) == pytest.approx([0.8, 1.0])


# Classification: MTEB's sampling


def test_experiment_samples_follow_mteb_reseeded_shuffles():
    # RandomState(42).permutation(10) is P = [8 1 5 0 7 2 9 4 3 6]. Experiment 1 walks P keeping 2 of
    # each label: 8(2) 1(0) 5(1) 0(0) 7(2) 4(1). Experiment 2 shuffles P itself with a reseeded RNG,
    # giving P[P] = [3 1 2 8 4 5 6 ...]: 3(1) 1(0) 2(0) 8(2) 4(1) 6(2); 5 is skipped (label 1 full).
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    assert np.random.RandomState(42).permutation(10).tolist() == [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
    samples = metrics.experiment_samples(labels, experiments=3, samples_per_label=2)
    assert samples[:2] == [[8, 1, 5, 0, 7, 4], [3, 1, 2, 8, 4, 6]]
    assert samples[2] == [0, 1, 5, 3, 7, 9]
    for chosen in samples:
        assert np.bincount(labels[chosen]).tolist() == [2, 2, 2]


def test_logreg_accuracy_on_separable_points():
    pytest.importorskip("sklearn")
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    assert metrics.logreg_accuracy(x, y, x, y) == 1.0


# Data and published numbers


def test_loaders_match_mteb_statistics():
    sts12 = data.load_sts("STS12")
    assert len(sts12.gold) == 3108 and sum(map(len, sts12.sentences1)) == 198_256
    assert sts12.gold.mean() == pytest.approx(3.5060643500643507)
    stsb = data.load_sts("STSBenchmark")
    assert (len(stsb.gold), sum(map(len, stsb.sentences2))) == (1379, 73_779)
    scifact = data.load_scifact(queries=5, extra_docs=10)
    assert len(scifact.query_ids) == 5 and all(doc in scifact.doc_ids for q in scifact.qrels.values() for doc in q)


def test_published_numbers_come_from_their_sources():
    readme = (data.DATA / "README.md").read_text(encoding="utf-8")
    for task, value in PUBLISHED["all-MiniLM-L6-v2"].items():
        if task != "source":  # README values are on the 0-1 scale, with all their digits
            assert f"{value / 100:.10f}"[:10] in readme or f"{value / 100:.5f}" in readme, task
    card = (data.DATA.parent / "seed" / "bge-small-en-v1.5-model-card.md").read_text(encoding="utf-8")
    card_values = {float(v) for v in re.findall(r"value: ([0-9.]+)", card)}
    for task, value in PUBLISHED["bge-small-en-v1.5"].items():
        if task != "source":
            assert value in card_values, task


# A reduced eval of the real MiniLM export


@pytest.mark.slow
@pytest.mark.realweights
def test_reduced_eval_matches_the_pytorch_reference(minilm_model):
    from bench.eval.columns import BgeortColumn, reference_column
    from bgeort import load_manifest

    reference, description = reference_column(load_manifest(minilm_model))
    if reference is None:
        pytest.skip(description)
    fp32, int8 = BgeortColumn(minilm_model, "fp32"), BgeortColumn(minilm_model, "int8")
    stsb = data.load_sts("STSBenchmark", limit=200)
    scores = {c.name: tasks.sts_score(c, stsb) for c in (reference, fp32, int8)}
    assert abs(scores["fp32"] - scores["reference"]) < 0.01
    assert abs(scores["int8"] - scores["fp32"]) < 1.0
    scifact = data.load_scifact(queries=4, extra_docs=12)
    found = {c.name: tasks.retrieval_scores(tasks.retrieve(c, scifact), scifact.qrels) for c in (reference, fp32)}
    assert found["fp32"]["ndcg_at_10"] == pytest.approx(found["reference"]["ndcg_at_10"], abs=1.0)
    assert 0 < found["fp32"]["ndcg_at_10"] <= 100 and found["fp32"]["recall_at_100"] == 100.0
    assert fp32.throughput()["tokens"] > 0 and fp32.throughput()["texts"] > 0


@pytest.mark.slow
@pytest.mark.realweights
def test_evaluate_writes_the_report(minilm_model, tmp_path):
    pytest.importorskip("sklearn")
    from bench.eval.run import Scope, evaluate

    scope = Scope(sts_pairs=20, scifact_queries=2, scifact_extra_docs=4, banking_test=20, banking_experiments=1)
    result = evaluate(minilm_model, precisions=["int8"], reference=False, scope=scope, log=lambda _: None)
    keys = [row["key"] for row in result["rows"]]
    assert keys == list(data.STS_TASKS) + ["SciFact", "SciFact recall@100", "Banking77"]
    assert all(set(row["values"]) == {"int8"} for row in result["rows"])
    assert result["checks"] == []  # a reduced scope is never judged against published numbers
    md, js = report.write(result, tmp_path / "eval-minilm", command="python -m bench.eval test")
    text = md.read_text(encoding="utf-8")
    assert "| STSBenchmark | cos Spearman | 82.0325 |" in text and "**tokens/s**" in text
    assert json.loads(js.read_text(encoding="utf-8"))["command"] == "python -m bench.eval test"


def test_rerank_rescores_the_top_k_and_reports_ndcg_before_and_after():
    class Oracle:  # scores a passage 1 when it is relevant to its query: the ideal reranker
        def compute_score(self, pairs):
            return np.array([float(passage.startswith(query)) for query, passage in pairs], dtype=np.float32)

    task = data.RetrievalSet(doc_ids=["d1", "d2", "d3"], docs=["q1 yes", "no", "q2 yes"], query_ids=["q1", "q2"],
                             queries=["q1", "q2"], qrels={"q1": {"d1": 1}, "q2": {"d3": 1}})
    run = {"q1": ["d2", "d1", "d3"], "q2": ["d1", "d2", "d3"]}  # relevant at rank 2, then rank 3
    found = tasks.rerank(Oracle(), task, run, depth=3)
    assert found["ndcg_at_10_before"] == pytest.approx(100 * round((LOG3 + 0.5) / 2, 5))
    assert found["ndcg_at_10_after"] == 100.0 and found["pairs"] == 6
    assert tasks.rerank(Oracle(), task, run, depth=1)["ndcg_at_10_after"] == 0.0  # only the top 1 is rescored


def _run_eval(model, out, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bench.eval", str(model), "--tasks", "STSBenchmark,BIOSSES", "--no-reference",
               "--precisions", "fp32,int8", "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def _break_int8(folder: Path) -> None:
    """Noise on the int8 graph's float weights (scales, biases, fp32 layers), manifest hashes updated."""
    import onnx
    from onnx import numpy_helper

    from bgeort.manifest import MANIFEST_NAME, sha256_file

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    variant = manifest["variants"]["int8"]
    graph = onnx.load(str(folder / variant["file"]))
    rng = np.random.default_rng(0)
    for tensor in graph.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size >= 64:
            noisy = values * (1 + 0.5 * rng.standard_normal(values.shape)).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    data_file = variant.get("data_file")
    if data_file:
        (folder / data_file).unlink()
        onnx.save(graph, str(folder / variant["file"]), save_as_external_data=True, location=data_file)
    else:
        onnx.save(graph, str(folder / variant["file"]))
    for name, sha_key, bytes_key in ((variant["file"], "sha256", "bytes"), (data_file, "data_sha256", "data_bytes")):
        if name:
            variant[sha_key], variant[bytes_key] = sha256_file(folder / name), (folder / name).stat().st_size
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


@pytest.mark.slow
@pytest.mark.realweights
def test_eval_exit_code_is_decided_by_real_failures_only(minilm_model, tmp_path):
    """BIOSSES's copy here is not MTEB's: int8 misses its published score by more than 0.5 (so does a
    correct fp32), and the run still exits 0; an int8 variant that is really wrong makes it exit 1."""
    pytest.importorskip("sklearn")
    done = _run_eval(minilm_model, tmp_path / "good")
    report_json = json.loads((tmp_path / "good.json").read_text())
    by_name = {c["check"].split(" (")[0]: c for c in report_json["checks"]}
    assert not by_name["int8 BIOSSES within 0.5 of published"]["passed"]  # the data-variant deviation
    assert not by_name["int8 BIOSSES within 0.5 of published"]["decides"]
    assert by_name["fp32 STSBenchmark within ±0.01 of published"]["passed"]
    assert by_name["int8 BIOSSES within 0.5 of fp32"]["decides"] and by_name["int8 BIOSSES within 0.5 of fp32"]["passed"]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decides the exit code" in (tmp_path / "good.md").read_text()

    broken = tmp_path / "broken-model"
    shutil.copytree(minilm_model, broken)
    _break_int8(broken)
    done = _run_eval(broken, tmp_path / "bad")
    assert done.returncode == 1
    assert "FAILED: int8 STSBenchmark within 0.5 of fp32" in done.stderr
