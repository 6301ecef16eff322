"""The release artefacts: the wheel holds every runtime module and nothing else, the sdist builds the same
wheel, and the wheel installed alone with [cpu] into a fresh venv imports, runs its CLI and embeds."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import bgeort

from .conftest import ROOT

pytestmark = pytest.mark.slow


def build(kind: str, source: Path, *, out: Path) -> Path:
    """`python -m build --wheel|--sdist` without isolation (this venv's setuptools: no download)."""
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", kind, "--outdir", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=600)
    (found,) = [p for p in out.iterdir() if p.suffix in (".whl", ".gz")]
    return found


def wheel_files(wheel: Path) -> set[str]:
    return {name for name in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in name}


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    wheel = build("--wheel", ROOT, out=out / "wheel")
    sdist = build("--sdist", ROOT, out=out / "sdist")
    return wheel, sdist, out


def test_the_wheel_holds_every_runtime_module_and_no_test_bench_or_export_file(artefacts):
    wheel, _, _ = artefacts
    assert wheel.name == f"bgeort-{bgeort.__version__}-py3-none-any.whl"
    inside = wheel_files(wheel)
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "bgeort").rglob("*.py")}
    assert expected <= inside, f"missing from the wheel: {sorted(expected - inside)}"
    assert {name.split("/")[0] for name in inside} == {"bgeort"}, sorted(inside)
    metadata = zipfile.ZipFile(wheel).read(f"bgeort-{bgeort.__version__}.dist-info/METADATA").decode()
    assert f"Version: {bgeort.__version__}" in metadata
    assert "Requires-Dist: onnxruntime>=1.17; extra == \"cpu\"" in metadata
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert sorted(line.split()[1].split(">")[0] for line in runtime) == ["numpy", "tokenizers"]


def test_the_sdist_builds_the_same_wheel(artefacts):
    wheel, sdist, out = artefacts
    with tarfile.open(sdist) as archive:
        archive.extractall(out / "unpacked", filter="data")
    (unpacked,) = (out / "unpacked").iterdir()
    again = build("--wheel", unpacked, out=out / "from-sdist")
    assert again.name == wheel.name
    assert wheel_files(again) == wheel_files(wheel)
    for name in wheel_files(wheel):
        assert zipfile.ZipFile(again).read(name) == zipfile.ZipFile(wheel).read(name), name


@pytest.mark.export
def test_the_wheel_installs_alone_and_embeds(artefacts, tiny_model, tmp_path):
    wheel, _, _ = artefacts
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{wheel}[cpu]"], check=True, capture_output=True,
                   text=True, timeout=900)
    # run from an empty folder, so nothing of this checkout is importable
    def run(*command: str) -> str:
        done = subprocess.run(list(command), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run(str(python), "-c", "import bgeort, sys; print(bgeort.__file__); "
                "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'optimum') if m in sys.modules))")
    assert where.splitlines() == [str(env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" /
                                      "site-packages" / "bgeort" / "__init__.py"), "[]"]
    assert run(str(env / "bin" / "bgeort"), "--version").strip() == f"bgeort {bgeort.__version__}"
    assert run(str(env / "bin" / "bgeort"), "doctor").startswith(f"bgeort {bgeort.__version__} from ")
    shown = run(str(env / "bin" / "bgeort"), "embed", str(tiny_model), "--text", "a cat", "--text", "a dog")
    assert "vectors: shape (2, 32)" in shown
    installed = run(str(python), "-m", "pip", "list", "--format=freeze")
    assert not any(line.lower().startswith(("torch==", "transformers==", "optimum")) for line in installed.splitlines())
