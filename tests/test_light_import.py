"""The runtime must not pull in the export stack, not even indirectly."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "huggingface_hub", "onnx", "export", "sentence_transformers")


def loaded_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_bgeort_is_light():
    loaded = loaded_after("import bgeort")
    assert "bgeort" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


@pytest.mark.export
def test_opening_and_encoding_is_light(tiny_model):
    loaded = loaded_after(f"import bgeort; bgeort.Embedder({str(tiny_model)!r}).encode(['hello'])")
    assert {"bgeort", "onnxruntime", "tokenizers", "numpy"} <= loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
