"""What the results were measured on: CPU, flags, memory, versions, thread and BLAS settings."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTIONS = ("bgeort", "numpy", "onnxruntime", "tokenizers", "torch", "transformers", "sentence-transformers",
                 "optimum", "optimum-onnx", "onnx", "fastembed", "threadpoolctl", "matplotlib")
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OMP_WAIT_POLICY", "ORT_DISABLE_SPINNING")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, flags


def describe_environment(thread_counts) -> dict:
    model, flags = cpu_model_and_flags()
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                              if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        memory_kib = None
    return {
        "cpu_model": model,
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1) if memory_kib else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": versions,
        "threads": list(thread_counts),
        "env_at_start": {name: os.environ.get(name) for name in ENV_VARS},
        "env_set_per_worker": "OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=<threads>, HF_HUB_OFFLINE=1, "
                              "TOKENIZERS_PARALLELISM=false",
        "env_gemm": "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, OPENBLAS_NUM_THREADS=<threads>, "
                    "threadpoolctl limit <threads>",
        "load_average_start": os.getloadavg(),
    }


def environment_line(distributions=DISTRIBUTIONS) -> str:
    """One markdown line: the CPU, its usable cores and memory, and the versions that ran."""
    found = describe_environment([])
    versions = []
    for name in distributions:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"Machine: {found['cpu_model']}, {found['cores_usable']} usable cores, {found['memory_gib']} GiB, flags "
            f"{' '.join(found['cpu_flags'])}; Python {found['python']}; {', '.join(versions)}.")


def save_results(out: Path, stem: str, summary: dict, raw: dict, write_markdown, stored: dict | None = None) -> Path:
    """A run's record: `out/stem.json` ({"summary", "raw": `stored` or `raw`}) and `out/stem.md`
    (write_markdown(summary, raw, path)); returns the markdown's path."""
    import json

    (out / f"{stem}.json").write_text(json.dumps({"summary": summary, "raw": raw if stored is None else stored},
                                                 indent=1))
    write_markdown(summary, raw, out / f"{stem}.md")
    return out / f"{stem}.md"
