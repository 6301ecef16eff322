"""`python -m bgeort doctor [MODEL]`: what this machine can run, and what a model folder would run.

Every probe here only reads: nothing is installed, no environment variable is set.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .cuda import CUDA_LIBRARIES, cuda_device_count, find_library, usable_cuda_provider
from .errors import BgeortError
from .manifest import load_manifest
from .model import choose_precisions
from .session import CUDA, cpu_flags, default_threads, installed_ort_distributions, this_cpu_needs_exact_int8

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c")


def cpu_facts(cpuinfo: str) -> dict:
    """Model name and the instruction-set flags that matter for int8/fp32 kernels, from /proc/cpuinfo text."""
    model = platform.processor() or "unknown"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
            break
    flags = cpu_flags(cpuinfo) or set()
    return {"model": model, "flags": {flag: flag in flags for flag in CPU_FLAGS}}


def report(model: str | None = None) -> list[str]:
    from . import __version__
    from .session import import_onnxruntime

    lines = [f"bgeort {__version__} from {Path(__file__).parent}"]
    try:
        ort = import_onnxruntime()
    except BgeortError as exc:
        return [*lines, f"onnxruntime: NOT USABLE: {exc}"]
    available = list(ort.get_available_providers())
    wheels = "; ".join(f"{name} in {', '.join(dirs)}" for name, dirs in installed_ort_distributions().items())
    lines.append(f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent} ({wheels or 'not from pip'}), "
                 f"device build: {ort.get_device()}")
    lines.append(f"providers available: {', '.join(available)}")
    usable_cuda = False
    if CUDA in available:
        problem = usable_cuda_provider(ort)
        usable_cuda = problem is None
        lines.append(f"CUDA provider: {'loads' if usable_cuda else 'NOT USABLE: ' + problem}")
    else:
        lines.append("CUDA provider: not in this build (pip uninstall -y onnxruntime && pip install 'bgeort[gpu]')")
    gpus = cuda_device_count()
    lines.append(f"GPUs the CUDA runtime sees: {'no CUDA runtime' if gpus is None else gpus}")
    for what, names in CUDA_LIBRARIES.items():
        found = find_library(names)
        lines.append(f"  {what:13s} {found or 'missing (' + ' or '.join(names) + ')'}")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu = cpu_facts(cpuinfo)
    flags = " ".join(f"{flag}={'yes' if on else 'no'}" for flag, on in cpu["flags"].items())
    lines.append(f"CPU: {cpu['model']}; {flags}")
    exact = this_cpu_needs_exact_int8()
    lines.append("int8: 7-bit-weight graphs (the default export) run the fast kernels; 8-bit-weight graphs run "
                 + ("onnxruntime's exact U8U8 kernels here (no VNNI: slower, but no 16-bit saturation)" if exact
                    else "the fast kernels too (VNNI, or not x86)"))
    lines.append(f"threads: {default_threads()} usable cores (os.cpu_count() {os.cpu_count()}); "
                 "bgeort uses them all unless threads= is given")
    if model is not None:
        manifest = load_manifest(model)
        lines.append(f"model {model}: {manifest.kind} {manifest.name}, variants {', '.join(manifest.variants)}")
        if "int8" in manifest.variants:
            bits = manifest.variants["int8"].weight_bits
            lines.append(f"  int8 weights: {bits or 'unrecorded (7)'}-bit")
        devices = ["cpu"] + (["cuda:0"] if usable_cuda else [])
        for device in devices:
            order = choose_precisions(manifest, "auto", device)
            lines.append(f"  device={device}: runs {order[0]}" + (f" (fallback {', '.join(order[1:])})" if order[1:] else ""))
    return lines
