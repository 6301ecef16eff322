"""Model folder faults: each a ModelFolderError naming the file and the fix; nothing read from outside the
folder; no pickle on the load path; an open model survives its folder being replaced by a re-export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import bgeort
from bgeort import ModelFolderError
from bgeort.manifest import MANIFEST_NAME


@pytest.fixture
def folder(tiny_model, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    return copy


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def edit(folder: Path, change) -> None:
    data = manifest(folder)
    change(data)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def graph(folder: Path, precision: str = "int8") -> Path:
    return folder / manifest(folder)["variants"][precision]["file"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


FAULTS = {
    "truncated graph": (lambda f: truncate(graph(f)), r"model_int8.onnx does not match the sha256"),
    "flipped byte": (lambda f: graph(f).write_bytes(graph(f).read_bytes()[:-1] + b"\0"), "does not match the sha256"),
    "missing graph": (lambda f: graph(f).unlink(), "model_int8.onnx is missing from the model folder"),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "corrupt tokenizer": (lambda f: truncate(f / "tokenizer.json"), "tokenizer.json does not match the sha256"),
    "manifest not JSON": (lambda f: (f / MANIFEST_NAME).write_text("{"), "bgeort.json is not readable JSON"),
    "manifest missing": (lambda f: (f / MANIFEST_NAME).unlink(), "bgeort.json"),
    "unknown key": (lambda f: edit(f, lambda m: m.update(colour="red")), r"unknown keys \['colour'\]"),
    "missing key": (lambda f: edit(f, lambda m: m.pop("dim")), r"lacks required keys \['dim'\]"),
    "wrong type": (lambda f: edit(f, lambda m: m.update(dim="32")), "'dim' is '32', expected int"),
    "bool for int": (lambda f: edit(f, lambda m: m.update(max_length=True)), "'max_length' is True, expected int"),
    "newer format": (lambda f: edit(f, lambda m: m.update(format_version=2)), "newer than this bgeort reads"),
    "graph outside": (lambda f: edit(f, lambda m: m["variants"]["int8"].update(file="../model_int8.onnx")),
                      "not a plain file name in the folder"),
    "graph absolute": (lambda f: edit(f, lambda m: m["variants"]["int8"].update(file=str(graph(f)))),
                       "not a plain file name in the folder"),
    "tokenizer outside": (lambda f: edit(f, lambda m: m.update(tokenizer_file="../tokenizer.json")),
                          "'tokenizer_file' is '../tokenizer.json', which is not a plain file name"),
    "tokenizer absolute": (lambda f: edit(f, lambda m: m.update(tokenizer_file=str(f / "tokenizer.json"))),
                           "which is not a plain file name"),
    "wrong output": (lambda f: edit(f, lambda m: m.update(output="pooled")), "has no output 'pooled'"),
    "wrong dim": (lambda f: edit(f, lambda m: (m.update(dim=64), m.pop("quantization_ranges", None))),
                  "gives 32-dimensional vectors, but bgeort.json says dim 64"),
    "ranges of another dim": (lambda f: edit(f, lambda m: m.update(dim=64)), "'quantization_ranges'.'min' must be 64"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_folder_is_an_error_naming_the_file_and_the_fix(folder, fault):
    damage, message = FAULTS[fault]
    damage(folder)
    with pytest.raises(ModelFolderError, match=message) as caught:
        bgeort.Embedder(folder, precision="int8")
    text = str(caught.value)
    assert str(folder) in text
    assert "make export" in text or "pip install -U bgeort" in text


def test_an_unparsable_tokenizer_without_verification_is_a_model_folder_error(folder):
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="tokenizer.json is not a tokenizer file .* Rebuild the folder with: make"):
        bgeort.Embedder(folder, verify=False)


def test_symlinked_files_and_a_read_only_folder_are_fine(folder, tiny_model):
    expected = bgeort.Embedder(tiny_model).encode(["a cat"])
    for name in ("tokenizer.json", graph(folder).name):  # model caches link their files
        (folder / name).unlink()
        os.symlink(tiny_model / name, folder / name)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        np.testing.assert_array_equal(bgeort.Embedder(folder).encode(["a cat"]), expected)
    finally:
        folder.chmod(0o755)


def test_a_symlink_to_other_bytes_fails_the_hash(folder, bert_reranker):
    graph(folder).unlink()
    os.symlink(bert_reranker / "model_int8.onnx", graph(folder))
    with pytest.raises(ModelFolderError, match="does not match the sha256"):
        bgeort.Embedder(folder, precision="int8")


def test_no_pickle_on_the_load_path(tiny_model, bert_reranker):
    script = f"""
import pickle
def refuse(*args, **kwargs):
    raise AssertionError("pickle used on the load path")
pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
import bgeort
bgeort.Embedder({str(tiny_model)!r}, threads=2, side_by_side=True).encode(["a cat"] * 40)
bgeort.Reranker({str(bert_reranker)!r}).compute_score([("q", "a cat")])
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_open_model_survives_its_folder_being_replaced(folder, bert_reranker):
    """A re-export renames a new folder into place; the open model keeps running what it opened (its
    side session too, which opens on first use: it is not opened from the new files)."""
    model = bgeort.Embedder(folder, threads=2, side_by_side=True)
    texts = ["a cat sat on the mat", "the red house"] * 20
    expected = model.encode(texts[:2])  # one batch: the main session alone, no side session yet
    assert model._model._side is None
    replaced = folder.parent / "replacement"
    shutil.copytree(folder, replaced)
    shutil.copy(bert_reranker / "model_int8.onnx", replaced / "model_int8.onnx")  # other bytes, same name
    old = folder.parent / "old"
    os.rename(folder, old)
    os.rename(replaced, folder)
    shutil.rmtree(old)
    with pytest.warns(RuntimeWarning, match="was replaced after it was opened"):
        after = model.encode(texts)
    np.testing.assert_allclose(after, np.tile(expected, (20, 1)), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        np.testing.assert_array_equal(model.encode(texts), after)
    with pytest.raises(ModelFolderError, match="does not match the sha256"):
        bgeort.Embedder(folder, precision="int8")  # a new open checks the new files
