"""The runtime must not pull in the export stack, not even indirectly."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "huggingface_hub", "onnx", "export", "sentence_transformers",
         "starlette", "uvicorn", "prometheus_client", "fastapi", "httpx", "openai", "pyarrow", "tqdm",
         "langchain_core", "llama_index", "haystack", "mteb", "ray", "pandas")


def loaded_after(code: str) -> set[str]:
    script = f"{code}\nimport sys\nprint(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("code", ["import bgeort", "import bgeort.integrations"])
def test_import_bgeort_is_light(code):
    loaded = loaded_after(code)
    assert "bgeort" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


@pytest.mark.export
def test_opening_and_encoding_is_light(tiny_model):
    loaded = loaded_after(f"import bgeort; bgeort.Embedder({str(tiny_model)!r}).encode(['hello'])")
    assert {"bgeort", "onnxruntime", "tokenizers", "numpy"} <= loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def _imports_within_bgeort(path, package: str) -> set[str]:
    """The bgeort modules a module imports anywhere in its code (deferred imports too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("bgeort"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bgeort"))
    return found


def test_bgeort_modules_import_each_other_without_a_cycle():
    """A cycle works only by import order or a deferred import; each module's dependencies must be a tree."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bgeort"
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, ".".join(parts[:-1]))
    graph = {name: {m for m in _imports_within_bgeort(path, package) if m in modules and m not in (name, "bgeort")}
             for name, (path, package) in modules.items() if name != "bgeort"}

    def visit(name, trail):
        assert name not in trail, f"import cycle: {' -> '.join([*trail, name])}"
        for dependency in graph.get(name, ()):
            visit(dependency, [*trail, name])

    for name in graph:
        visit(name, [])
