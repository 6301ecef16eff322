"""Finding CUDA: the shared libraries onnxruntime-gpu's CUDA provider loads, and the GPUs the CUDA
runtime sees. Used by session (to refuse a CUDA run that would quietly fall back to the CPU) and by
doctor (to report); it imports neither. Every probe only reads: nothing is installed or set.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from pathlib import Path

# Shared libraries onnxruntime-gpu's CUDA provider loads (sonames for CUDA 12 and 13, cuDNN 9).
CUDA_LIBRARIES = {
    "CUDA runtime": ("libcudart.so.13", "libcudart.so.12"),
    "cuBLAS": ("libcublas.so.13", "libcublas.so.12"),
    "cuBLASLt": ("libcublasLt.so.13", "libcublasLt.so.12"),
    "cuFFT": ("libcufft.so.12", "libcufft.so.11"),
    "cuDNN": ("libcudnn.so.9",),
}


def find_library(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


def cuda_device_count() -> int | None:
    """GPUs the CUDA runtime sees (after CUDA_VISIBLE_DEVICES), or None without a CUDA runtime."""
    name = find_library(CUDA_LIBRARIES["CUDA runtime"])
    if name is None:
        return None
    count = ctypes.c_int(0)
    return count.value if ctypes.CDLL(name).cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0


def cuda_provider_problem(ort) -> str | None:
    """Why the CUDA provider library cannot load (the dynamic loader names the missing file), or None."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.is_file():
        return f"{library.name} is not in this onnxruntime (the CPU wheel): pip install 'bgeort[gpu]'"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return None


def usable_cuda_provider(ort) -> str | None:
    """None when onnxruntime's CUDA provider library loads, else why not.

    The CUDA and cuDNN libraries may come as pip wheels (`pip install 'onnxruntime-gpu[cuda,cudnn]'`)
    that the dynamic loader does not search; onnxruntime's `preload_dlls` loads them from there (what
    `import torch` otherwise does as a side effect), so it is tried before giving up."""
    problem = cuda_provider_problem(ort)
    if problem is not None and "cannot open shared object" in problem and hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own warnings
            try:
                ort.preload_dlls(cuda=True, cudnn=True)
            except Exception:  # noqa: BLE001 - what still fails to load is reported below
                pass
        problem = cuda_provider_problem(ort)
    return problem
