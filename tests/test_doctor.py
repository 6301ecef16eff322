import subprocess
import sys

import pytest

import bgeort
import bgeort.cuda
from bgeort.cuda import usable_cuda_provider
from bgeort.doctor import cpu_facts

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma f16c
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma f16c
"""


def test_cpu_facts_reads_model_and_int8_relevant_flags():
    facts = cpu_facts(CPUINFO)
    assert facts["model"] in ("AMD EPYC 7B13", facts["model"])  # platform.processor() may win
    assert facts["flags"]["avx2"] and facts["flags"]["fma"]
    assert not facts["flags"]["avx512_vnni"] and not facts["flags"]["avx512f"]


def test_doctor_on_a_cpu_machine():
    out = subprocess.run([sys.executable, "-m", "bgeort", "doctor"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"bgeort {bgeort.__version__} from ")
    assert "providers available:" in out and "CPUExecutionProvider" in out
    assert "CPU:" in out and "avx2=" in out and "threads:" in out
    assert "cuDNN" in out


@pytest.mark.export
def test_doctor_says_which_variant_each_device_runs(tiny_model):
    out = subprocess.run([sys.executable, "-m", "bgeort", "doctor", str(tiny_model)], capture_output=True, text=True,
                         check=True).stdout
    assert "device=cpu: runs int8 (fallback fp32-unfused, fp32)" in out


class _OrtWithPreload:
    def __init__(self):
        self.preloaded = []

    def preload_dlls(self, **kinds):
        print("onnxruntime's own chatter")
        self.preloaded.append(kinds)


def test_cuda_libraries_from_pip_wheels_are_preloaded(monkeypatch, capsys):
    ort = _OrtWithPreload()
    answers = ["libcudnn.so.9: cannot open shared object file: No such file or directory", None]
    monkeypatch.setattr(bgeort.cuda, "cuda_provider_problem", lambda _: answers.pop(0))
    assert usable_cuda_provider(ort) is None
    assert ort.preloaded == [{"cuda": True, "cudnn": True}] and capsys.readouterr().out == ""
    # still missing after the preload (no nvidia-* wheels either): the loader's own words come back
    answers[:] = ["libcudnn.so.9: cannot open shared object file", "libcudnn.so.9: cannot open shared object file"]
    assert usable_cuda_provider(ort).startswith("libcudnn.so.9")
    # the CPU wheel has no CUDA provider library at all: nothing to preload
    monkeypatch.setattr(bgeort.cuda, "cuda_provider_problem", lambda _: "libonnxruntime_providers_cuda.so is not in this onnxruntime")
    ort.preloaded.clear()
    assert "not in this onnxruntime" in usable_cuda_provider(ort) and ort.preloaded == []
