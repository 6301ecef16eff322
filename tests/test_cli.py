"""The command line and the Makefile targets a new user runs first, run for real as subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bgeort

from .conftest import ROOT, make_bert_source, make_classifier_source, write_sentence_transformers_files


def make(*targets_and_vars: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`make` in the repository with this interpreter's environment standing in for .venv (not rebuilt)."""
    venv = Path(sys.prefix)
    command = ["make", "-C", str(cwd), f"VENV={venv}", f"PY={sys.executable}", "-o", f"{venv}/.installed",
               *targets_and_vars]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def bgeort_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgeort", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.export
@pytest.mark.slow
def test_make_export_of_an_embedder_ends_with_a_similarity_matrix(tmp_path):
    source = make_bert_source(tmp_path / "src" / "tiny-embedder", layers=1, hidden=32, heads=4, ffn=64, positions=64,
                              tokenizer_from=None, seed=3)
    write_sentence_transformers_files(source, pooling="cls", max_seq_length=32)
    done = make("export", f"SOURCE={source}", f"OUT={tmp_path / 'out'}", "NAME=emb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Embedder(" in done.stdout and "vectors: shape (3, 32)" in done.stdout
    assert "A man is playing a guitar." in done.stdout
    assert bgeort.load_manifest(tmp_path / "out" / "emb").kind == "embedder"


@pytest.mark.export
@pytest.mark.slow
def test_make_export_of_a_reranker_ends_with_reranked_passages(tmp_path):
    source = make_classifier_source(tmp_path / "src" / "tiny-cross-encoder", model_type="bert", layers=1, seed=4)
    done = make("export", f"SOURCE={source}", f"OUT={tmp_path / 'out'}", "NAME=rr")
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "out" / "rr"
    assert bgeort.load_manifest(folder).kind == "reranker"
    assert "Reranker(" in done.stdout and "query: what is a panda?" in done.stdout
    # the demo's lines are the library's ranking, best first
    from bgeort.cli.demo import PASSAGES, QUERY

    ranking = bgeort.Reranker(folder).rerank(QUERY, list(PASSAGES))
    shown = [line for line in done.stdout.splitlines() if line.strip().startswith(("0.", "1.", "-"))]
    assert [int(line.split("[")[1].split("]")[0]) for line in shown] == ranking.indices.tolist()
    np.testing.assert_allclose([float(line.split()[0]) for line in shown], ranking.scores, atol=1e-3)


def test_embed_on_a_reranker_folder_says_which_command_to_use(bert_reranker):
    done = bgeort_cli("embed", str(bert_reranker), "--text", "hello")
    assert done.returncode == 1
    assert "holds a reranker model, not an embedder" in done.stderr and "bgeort rerank" in done.stderr


def test_rerank_and_embed_commands(bert_reranker, tiny_model):
    done = bgeort_cli("rerank", str(bert_reranker), "--query", "what is a panda?", "--text", "hello world",
                      "--text", "the panda is a bear")
    assert done.returncode == 0, done.stderr
    expected = bgeort.Reranker(bert_reranker).rerank("what is a panda?", ["hello world", "the panda is a bear"])
    assert [int(line.split("[")[1][0]) for line in done.stdout.splitlines()[2:]] == expected.indices.tolist()
    done = bgeort_cli("embed", str(tiny_model), "--text", "a cat", "--text", "a dog")
    assert done.returncode == 0, done.stderr
    assert "vectors: shape (2, 32)" in done.stdout
    done = bgeort_cli("embed", str(tiny_model))
    assert done.returncode != 0 and "give the texts to embed" in done.stderr
    done = bgeort_cli("embed", str(tiny_model), "a cat")  # a positional argument is an INPUT file
    assert done.returncode != 0 and "need an output: add -o OUTPUT" in done.stderr


def test_version_and_help():
    done = bgeort_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"bgeort {bgeort.__version__}"
    done = bgeort_cli("--help")
    assert done.returncode == 0
    for command in ("embed", "rerank", "demo", "info", "doctor"):
        assert command in done.stdout
