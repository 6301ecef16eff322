"""Export faults: a run killed at any stage leaves no folder that looks valid and, on the next run, no
temporary folders; two exports to one name at once give one whole folder; remote code is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bgeort
from export.pipeline import check_remote_code, remove_stale_folders
from export.source import ExportError

from ..conftest import ROOT, make_bert_source, write_sentence_transformers_files

pytestmark = [pytest.mark.export, pytest.mark.slow]


def source(folder: Path, seed: int) -> Path:
    made = make_bert_source(folder, layers=1, hidden=32, heads=4, ffn=64, positions=64, tokenizer_from=None, seed=seed)
    write_sentence_transformers_files(made, pooling="cls", max_seq_length=32)
    return made


def export_command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "export", str(src), "--out", str(out), "--name", "m", *extra]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".m."))


@pytest.mark.parametrize("stage", ["exporting the ONNX graph", "quantizing", "fp16 "])  # early, mid, verified
def test_an_export_killed_at_any_stage_leaves_no_valid_looking_folder(tmp_path, stage):
    src, out = source(tmp_path / "src" / "m", seed=1), tmp_path / "out"
    process = subprocess.Popen(export_command(src, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith(f"[export] {stage}"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert not (out / "m").exists()
    assert leftovers(out), "the killed run had a staging folder"
    done = subprocess.run(export_command(src, out), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert leftovers(out) == []
    assert bgeort.Embedder(out / "m").encode(["a cat"]).shape == (1, 32)


def test_a_killed_re_export_keeps_the_old_folder_whole(tmp_path):
    src, out = source(tmp_path / "src" / "m", seed=1), tmp_path / "out"
    subprocess.run(export_command(src, out), cwd=ROOT, check=True, capture_output=True, timeout=600)
    before = json.loads((out / "m" / "bgeort.json").read_text())
    process = subprocess.Popen(export_command(src, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stderr:
        if line.startswith("[export] quantizing"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert json.loads((out / "m" / "bgeort.json").read_text()) == before
    bgeort.Embedder(out / "m", verify=True).encode(["a cat"])  # every hash still matches


def test_two_exports_to_one_name_at_once_give_one_whole_folder(tmp_path):
    sources = [source(tmp_path / f"src{seed}" / "m", seed=seed) for seed in (1, 2)]
    out = tmp_path / "out"
    runs = [subprocess.Popen(export_command(src, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for src in sources]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    manifest = bgeort.load_manifest(out / "m")
    assert manifest.provenance["source"] in {str(src) for src in sources}
    for precision in manifest.variants:  # every file is the one its manifest hashed: nothing mixed
        bgeort.Embedder(out / "m", precision=precision, verify=True)
    assert leftovers(out) == []


def test_stale_folders_of_dead_exports_only_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in (f".m.partial-{dead}-abc", f".m.old-{dead}-def", f".m.partial-{os.getpid()}-live", ".other.partial-1-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "m").mkdir()
    removed = remove_stale_folders(tmp_path, "m")
    assert sorted(p.name for p in removed) == [f".m.old-{dead}-def", f".m.partial-{dead}-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".m.partial-{os.getpid()}-live", ".other.partial-1-x", "m"]


def test_a_source_with_its_own_model_code_is_refused_without_the_flag(tmp_path):
    src = source(tmp_path / "src" / "m", seed=1)
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (src / "config.json").write_text(json.dumps(config))
    (src / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    done = subprocess.run(export_command(src, tmp_path / "out"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "ships its own model code" in done.stderr and "--trust-remote-code" in done.stderr
    assert "remote code ran" not in done.stderr and not (tmp_path / "out" / "m").exists()
    with pytest.raises(ExportError, match="auto_map"):
        check_remote_code(str(src), config, False)
    check_remote_code(str(src), config, True)  # the flag lets it through to transformers
