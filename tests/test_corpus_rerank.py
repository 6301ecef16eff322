"""`bgeort rerank MODEL INPUT -o OUTPUT`, run for real as subprocesses on generated files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bgeort

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

QUERIES = ["what is a panda?", "how do volcanoes form", "python sort a list"]
PASSAGES = ["The giant panda is a bear.", "Magma rises through the crust.", "Use sorted() with a key.",
            "The stock market fell.", "Pandas is a Python library."]


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgeort", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def rows_of(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_candidate_rows_with_top_k_equal_rerank(bert_reranker, tmp_path, suffix):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"query": q, "candidates": PASSAGES, "qid": f"q{i}"}) + "\n"
                              for i, q in enumerate(QUERIES)))
    out = tmp_path / f"out{suffix}"
    done = cli("rerank", bert_reranker, source, "-o", out, "--top-k", "2", "--normalize", "--id-field", "qid",
               "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"{len(QUERIES) * len(PASSAGES)} pairs")
    rows = rows_of(out)
    model = bgeort.Reranker(bert_reranker)
    expected = []
    for i, query in enumerate(QUERIES):
        ranking = model.rerank(query, PASSAGES, top_k=2)
        expected += [(f"q{i}", int(c), rank) for rank, c in enumerate(ranking.indices)]
        np.testing.assert_allclose([r["score"] for r in rows if r["id"] == f"q{i}"], ranking.scores, atol=1e-6)
    assert [(r["id"], r["candidate"], r["rank"]) for r in rows] == expected


def test_pair_rows_csv_equal_compute_score(bert_reranker, tmp_path):
    source = tmp_path / "in.csv"
    pairs = [(q, p) for q in QUERIES for p in PASSAGES]
    source.write_text("query,passage\n" + "".join(f'"{q}","{p}"\n' for q, p in pairs))
    out = tmp_path / "out.jsonl"
    done = cli("rerank", bert_reranker, source, "-o", out, "--quiet", "--chunk-rows", "4")
    assert done.returncode == 0, done.stderr
    rows = rows_of(out)
    assert [r["id"] for r in rows] == list(range(len(pairs))) and {r["rank"] for r in rows} == {0}
    np.testing.assert_allclose([r["score"] for r in rows], bgeort.Reranker(bert_reranker).compute_score(pairs),
                               atol=1e-5)


def test_bad_rerank_rows(bert_reranker, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"query": "q", "candidates": ["a", None]}) + "\n" +
                      json.dumps({"query": "q", "passage": "fine"}) + "\n")
    out = tmp_path / "out.jsonl"
    done = cli("rerank", bert_reranker, source, "-o", out, "--quiet")
    assert done.returncode == 1 and "in.jsonl:1: candidates[1] is null, not a string" in done.stderr
    done = cli("rerank", bert_reranker, source, "-o", out, "--quiet", "--on-error", "skip")
    assert done.returncode == 0 and "1 rejected rows" in done.stderr
    assert [r["id"] for r in rows_of(out)] == [1]
    assert cli("rerank", bert_reranker, source, "-o", tmp_path / "out.npy").returncode != 0


@pytest.mark.slow
def test_rerank_killed_and_resumed_equals_an_uninterrupted_run(bert_reranker, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"query": QUERIES[i % 3], "candidates": PASSAGES}) + "\n"
                              for i in range(600)))
    reference = tmp_path / "reference.parquet"
    assert cli("rerank", bert_reranker, source, "-o", reference, "--top-k", "3", "--quiet").returncode == 0
    out = tmp_path / "out.parquet"
    command = [sys.executable, "-m", "bgeort", "rerank", str(bert_reranker), str(source), "-o", str(out),
               "--top-k", "3", "--quiet", "--chunk-rows", "8"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = tmp_path / "out.parquet.partial" / "journal.json"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(journal.read_text())["rows_read"] >= 200:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    done = cli("rerank", bert_reranker, source, "-o", out, "--top-k", "3", "--quiet", "--chunk-rows", "8")
    assert done.returncode == 0, done.stderr
    got, want = rows_of(out), rows_of(reference)
    assert [(r["id"], r["candidate"], r["rank"]) for r in got] == [(r["id"], r["candidate"], r["rank"]) for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-6)
