"""ONNX Runtime sessions: the one module that imports onnxruntime.

Choosing providers is a pure function (`choose_providers`) so the CPU/CUDA decision is tested
without either; opening a session checks afterwards that the provider asked for is really active.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass

from .cuda import cuda_device_count, usable_cuda_provider
from .errors import DeviceError, MissingDependencyError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_ort_distributions() -> dict[str, list[str]]:
    """Which onnxruntime wheels pip has installed, and in which site directories (all on sys.path)."""
    found: dict[str, list[str]] = {}
    for name in _ORT_DISTRIBUTIONS:
        for dist in importlib.metadata.distributions(name=name):
            where = os.path.realpath(str(dist.locate_file("")))
            if where not in found.setdefault(name, []):
                found[name].append(where)
    return found


def check_ort_install(installed: dict[str, list[str]]) -> None:
    """Raise if onnxruntime and onnxruntime-gpu share a site directory: both write its onnxruntime/
    package, so whichever was installed last has overwritten part of the other. In different
    directories (a virtual environment over the system's, a --target folder first on PYTHONPATH)
    nothing is overwritten and the first on sys.path is the one imported (`bgeort doctor` says which)."""
    shared = sorted(set.intersection(*(set(dirs) for dirs in installed.values()))) if len(installed) > 1 else []
    if shared:
        raise MissingDependencyError(
            f"both onnxruntime and onnxruntime-gpu are installed in {shared[0]}; they overwrite each "
            "other's files there, so which one runs is undefined. Keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'bgeort[cpu]' "
            "(or 'bgeort[gpu]' for CUDA)"
        )


def import_onnxruntime():
    """onnxruntime, or an error with the exact pip line that fixes its absence or a broken mix."""
    check_ort_install(installed_ort_distributions())
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise MissingDependencyError(
            f"onnxruntime cannot be imported ({exc}). Install it with: pip install 'bgeort[cpu]' "
            "(or pip install 'bgeort[gpu]' for CUDA)"
        ) from exc


@dataclass(frozen=True)
class ProviderChoice:
    """What `choose_providers` decided: the device in words and ONNX Runtime's provider list."""

    device: str  # "cpu" or "cuda:N"
    providers: list


def parse_device(device: str) -> tuple[str, int | None]:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> (kind, index)."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:0', got {device!r}")
    name = device.strip().lower()
    if name in ("auto", "cpu"):
        return name, None
    if name == "cuda":
        return "cuda", 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return "cuda", int(name[5:])
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def choose_providers(device: str, available: list[str]) -> list[ProviderChoice]:
    """The provider lists to try in order for `device`, given ONNX Runtime's available providers.

    'auto' tries CUDA first when the CUDA provider is available and falls back to CPU; an explicit
    'cuda' without the CUDA provider is an error, never a silent CPU run.
    """
    kind, index = parse_device(device)
    cpu = ProviderChoice("cpu", [CPU])
    if kind == "cpu":
        return [cpu]
    has_cuda = CUDA in available
    if kind == "auto":
        return [_cuda_choice(0), cpu] if has_cuda else [cpu]
    if not has_cuda:
        raise DeviceError(
            f"device={device!r} was asked for, but this onnxruntime has no CUDA provider "
            f"(available: {', '.join(available) or 'none'}). Install the CUDA build with "
            "pip uninstall -y onnxruntime && pip install 'bgeort[gpu]', or use device='cpu'"
        )
    return [_cuda_choice(index)]


def _cuda_choice(index: int) -> ProviderChoice:
    return ProviderChoice(f"cuda:{index}", [(CUDA, {"device_id": index}), CPU])


def default_threads() -> int:
    """Cores this process may use: its CPU affinity (taskset, cpuset), capped by a cgroup CPU quota
    (docker --cpus, Kubernetes limits), unlike os.cpu_count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup", own: str | None = None) -> int | None:
    """Whole cores allowed by this process's cgroup CPU quota (rounded up), or None without a quota.
    cgroup v2's cpu.max ("QUOTA PERIOD" or "max PERIOD"), else v1's cpu.cfs_quota_us / cpu.cfs_period_us;
    `own` is /proc/self/cgroup's text (read when None)."""
    v2, v1 = _own_cgroups(_read("/proc/self/cgroup") or "" if own is None else own)
    for folder in dict.fromkeys([f"{root}{v2}" if v2 else None, root]):
        text = folder and _read(f"{folder}/cpu.max")
        if text:
            quota, _, period = text.strip().partition(" ")
            return quota_cores(quota, period)
    for base in (f"{root}/cpu", f"{root}/cpu,cpuacct"):
        for folder in dict.fromkeys([f"{base}{v1}" if v1 else None, base]):
            quota, period = folder and _read(f"{folder}/cpu.cfs_quota_us"), folder and _read(f"{folder}/cpu.cfs_period_us")
            if quota and period:
                return quota_cores(quota.strip(), period.strip())
    return None


def quota_cores(quota: str, period: str) -> int | None:
    """ceil(quota / period) cores; None for no quota ('max', -1) or values that are not numbers."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, -(-quota_us // period_us))


def _own_cgroups(text: str) -> tuple[str | None, str | None]:
    """(cgroup v2 path, v1 cpu controller path) from /proc/self/cgroup text; '/' becomes ''."""
    v2 = v1 = None
    for line in text.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2 = path.rstrip("/")
        elif "cpu" in controllers.split(","):
            v1 = path.rstrip("/")
    return v2, v1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_flags(cpuinfo: str) -> set[str] | None:
    """The first processor's instruction-set flags in /proc/cpuinfo text; None without a flags line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def exact_int8_kernels_needed(machine: str, cpuinfo: str | None) -> bool:
    """Whether ONNX Runtime must use its exact U8U8 int8 kernels on this CPU.

    x86 CPUs without VNNI multiply uint8 activations by int8 weights with a 16-bit saturating add of
    two products (AVX2 vpmaddubsw), which 8-bit weights can overflow; VNNI accumulates in 32 bits.
    `session.x64quantprecision=1` makes ORT convert the weights to uint8 and use exact kernels there
    (slower on those CPUs only). Unknown x86 CPUs (no /proc/cpuinfo) get the exact kernels.
    """
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = None if cpuinfo is None else cpu_flags(cpuinfo)
    return flags is None or not ({"avx512_vnni", "avx_vnni"} & flags)


@functools.cache
def this_cpu_needs_exact_int8() -> bool:
    import platform

    try:
        cpuinfo = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        cpuinfo = None
    return exact_int8_kernels_needed(platform.machine(), cpuinfo)


# onnxruntime fusions left out on CPU because the unfused operators run faster there
# (docs/design.md, "Fused or plain").
CPU_DISABLED_FUSIONS = ("BiasGeluFusion",)


def session_options(ort, *, threads: int | None, spinning: bool | str, exact_int8: bool | None = None,
                    cpu: bool = True, memory_patterns: bool = False):
    options = ort.SessionOptions()
    if cpu and not memory_patterns:
        # Without memory patterns tensors are freed as they die, which peaks lower; the side-by-side
        # session keeps them (docs/design.md, "Memory between calls").
        options.enable_mem_pattern = False
    if this_cpu_needs_exact_int8() if exact_int8 is None else exact_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    options.intra_op_num_threads = default_threads() if threads is None else threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if spinning is False:
        # Threads that spin between runs take cores away from a caller doing other work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spinning == "runs":
        # Spin inside a run (its many small parallel sections), stop when it returns: the time between
        # runs is a server's event loop's and its clients' (docs/server.md, "How the cores are shared").
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def open_session(model_path: str, choice: ProviderChoice, *, threads: int | None, spinning: bool | str = True,
                 exact_int8: bool | None = None, memory_patterns: bool = False, tf32: bool = True):
    """An InferenceSession for `choice`, verified to run on the device it names.

    `tf32=False` keeps float32 MatMuls in float32 on CUDA: onnxruntime's CUDA provider otherwise
    runs them as TF32 (10-bit mantissa), which is what fp16 is for; float32 is chosen for its
    accuracy (a random-weight XLM-R reranker on an H200: logits 0.09 off PyTorch with TF32)."""
    ort = import_onnxruntime()
    wanted = choice.providers[0] if isinstance(choice.providers[0], str) else choice.providers[0][0]
    if wanted == CUDA:
        problem = usable_cuda_provider(ort)
        if problem is not None:  # onnxruntime would log it and quietly run on the CPU
            raise DeviceError(
                f"asked ONNX Runtime for {CUDA} on {choice.device}, but its CUDA provider cannot load: "
                f"{problem}. Install the CUDA {_cuda_major(ort)} and cuDNN 9 libraries (or pip install "
                f"'onnxruntime-gpu[cuda,cudnn]'), see `python -m bgeort doctor`, or use device='cpu'"
            )
    options = session_options(ort, threads=threads, spinning=spinning, exact_int8=exact_int8,
                              cpu=choice.device == "cpu", memory_patterns=memory_patterns)
    disabled = CPU_DISABLED_FUSIONS if choice.device == "cpu" else ()
    providers = [(name, {**settings, "use_tf32": "1" if tf32 else "0"}) if name == CUDA else (name, settings)
                 for name, settings in (_named(p) for p in choice.providers)]
    session = ort.InferenceSession(model_path, sess_options=options, providers=providers,
                                   disabled_optimizers=list(disabled))
    active = session.get_providers()
    if not active or active[0] != wanted:  # e.g. a provider that loads but finds no such GPU
        count = cuda_device_count() if wanted == CUDA else None
        index = int(choice.device.partition(":")[2] or 0)
        reason = (f": CUDA sees {count} GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}; "
                  "CUDA_VISIBLE_DEVICES narrows and renumbers them)" if count and index >= count else
                  ": CUDA sees no GPU" if count == 0 else "")
        raise DeviceError(
            f"asked ONNX Runtime for {wanted} on {choice.device} but the session runs on {active}{reason}. "
            "See `python -m bgeort doctor` for what is missing, or use device='cpu'"
        )
    return session


def _named(provider) -> tuple[str, dict]:
    return (provider, {}) if isinstance(provider, str) else (provider[0], dict(provider[1]))


def _cuda_major(ort) -> str:
    """The CUDA major version this onnxruntime-gpu was built for ('12', '13'), or 'x' if unrecorded."""
    info = getattr(getattr(ort, "capi", None), "build_and_package_info", None)
    version = getattr(info, "cuda_version", None) or ""
    return version.split(".")[0] or "x"


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())
