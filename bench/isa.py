"""Run the benchmark (or any command) on this machine's cores with a smaller instruction set.

Issue 4's targets and its notes on int8 were written for an AVX2 CPU without VNNI (AMD Zen 3); the
machine here has AVX-512, VNNI and AMX. `isa_mask.c`, loaded with LD_PRELOAD, makes cpuid hide
those, so onnxruntime, PyTorch, OpenBLAS and numpy choose the kernels they would choose on an
AVX2 + FMA CPU (x86-64-v3). It changes which instructions run, not the cores: caches, clocks and
the FMA ports stay this Xeon's, so it stands in for such a CPU's instruction set, not its speed.

    python bench/isa.py avx2 --probe               # what each library sees under the mask (JSON)
    python bench/isa.py avx2 -- python bench/ab.py ...  # any command under the mask
    python bench/cpu.py --isa avx2                 # the CPU benchmark under it -> results/avx2/

Needs Linux on x86-64, a C compiler (`cc`) and CPUID faulting (`cpuid_fault` in /proc/cpuinfo).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "isa_mask.c"
BUILD = HERE / "results" / "tmp" / "isa"
ISAS = ("native", "avx2")
# What the mask hides, as /proc/cpuinfo names it (the flags bench/environment.py reports).
HIDDEN_FLAGS = frozenset({
    "avx512f", "avx512dq", "avx512ifma", "avx512pf", "avx512er", "avx512cd", "avx512bw", "avx512vl",
    "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_4vnniw",
    "avx512_4fmaps", "avx512_vp2intersect", "amx_bf16", "avx512_fp16", "amx_tile", "amx_int8", "avx_vnni",
    "avx512_bf16",
})


class MaskUnavailable(RuntimeError):
    """This machine cannot run the mask; the message says what is missing."""


def cpu_flags() -> set[str]:
    """This CPU's flags as /proc/cpuinfo lists them (empty where there is none)."""
    from bgeort.session import cpu_flags as parse

    try:
        return parse(Path("/proc/cpuinfo").read_text()) or set()
    except OSError:
        return set()


def unavailable_reason() -> str | None:
    """Why the mask cannot run here, or None."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"the instruction-set mask needs Linux on x86-64, not {sys.platform} on {platform.machine()}"
    if "cpuid_fault" not in cpu_flags():
        return "this CPU or hypervisor has no CPUID faulting (no cpuid_fault in /proc/cpuinfo's flags)"
    if shutil.which("cc") is None:
        return "no C compiler: install one (apt-get install gcc) to build bench/isa_mask.c"
    return None


def build(isa: str) -> Path | None:
    """The preload library for `isa` (compiled when missing or older than its source); None for native."""
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; known: {', '.join(ISAS)}")
    if isa == "native":
        return None
    reason = unavailable_reason()
    if reason:
        raise MaskUnavailable(reason)
    library = BUILD / f"isa_mask_{isa}.so"
    if not library.is_file() or library.stat().st_mtime < SOURCE.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        temporary = library.with_suffix(f".{os.getpid()}.so")
        subprocess.run(["cc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(temporary), str(SOURCE)], check=True)
        temporary.replace(library)
    return library


def environ(isa: str, base: dict | None = None) -> dict:
    """`base` (default os.environ) with the mask preloaded for `isa`."""
    env = dict(os.environ if base is None else base)
    library = build(isa)
    if library is not None:
        env.pop("PYTHONFAULTHANDLER", None)  # faulthandler's SIGSEGV handler would take the cpuid traps
        env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    return env


# Run in a child under the mask: what each library there believes the CPU has. The last item checks
# onnxruntime's integer GEMM itself: u8 x s8 products of full-range 8-bit weights come out exact with
# VNNI (or AVX-512BW's widening path) and wrong with AVX2's saturating 16-bit pair sums.
PROBE = r"""
import json, numpy as np
out = {}
from numpy._core._multiarray_umath import __cpu_features__ as f
out["numpy"] = {k: bool(f.get(k)) for k in ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR")}
try:
    import threadpoolctl
    out["blas"] = sorted({str(i.get("architecture")) for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"})
except ImportError:
    pass
try:
    import torch
    out["torch"] = torch.backends.cpu.get_cpu_capability()
except ImportError:
    pass
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
rng = np.random.RandomState(0)
a = rng.randint(0, 256, (16, 256)).astype(np.uint8)
w = rng.randint(-127, 128, (256, 64)).astype(np.int8)
graph = helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "w", "az"], ["y"])], "probe",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [16, 256])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "az")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
out["onnxruntime_u8s8_8bit_exact"] = bool(np.array_equal(y, (a.astype(np.int64) - 128) @ w.astype(np.int64)))
print(json.dumps(out))
"""


def probe(isa: str) -> dict:
    """What numpy, OpenBLAS, PyTorch (if installed) and onnxruntime see in a child process under `isa`."""
    run = subprocess.run([sys.executable, "-c", PROBE], env=environ(isa), capture_output=True, text=True)
    if run.returncode != 0:
        raise MaskUnavailable(f"the probe under {isa} failed ({run.returncode}): {run.stderr.strip()[-500:]}")
    return json.loads(run.stdout)


def mark_environment(environment: dict, isa: str, seen: dict | None) -> dict:
    """A benchmark's environment record (bench/environment.py) for a run under `isa`: the mask, what
    the probe saw, and the CPU flags the workers' cpuid reports rather than the host's /proc/cpuinfo."""
    environment["isa"] = isa
    if isa != "native":
        environment["cpu_flags"] = [f for f in environment["cpu_flags"] if f not in HIDDEN_FLAGS]
        environment["isa_probe"] = seen
    return environment


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ISAS or (len(argv) > 1 and argv[1] not in ("--probe", "--")):
        print(__doc__, file=sys.stderr)
        return 2
    isa = argv[0]
    try:
        if len(argv) == 1 or argv[1] == "--probe":
            print(json.dumps(probe(isa), indent=1))
            return 0
        return subprocess.run(argv[2:], env=environ(isa)).returncode
    except MaskUnavailable as exc:
        print(f"bench/isa.py: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
