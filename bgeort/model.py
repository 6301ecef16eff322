"""Opening a model folder: manifest, file hashes, precision choice, session, and the batching loop
that `Embedder` and `Reranker` share."""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .batching import attention_budget, plan_batches
from .errors import BgeortError, DeviceError, ModelFolderError
from .manifest import Manifest, load_manifest, rebuild_hint, sha256_file
from .session import available_providers, choose_providers, default_threads, import_onnxruntime, open_session
from .tokenization import Encoded, TextTokenizer

PRECISION_CHOICES = ("auto", "fp32", "fp32-unfused", "int8", "fp16")
_SIDE_LOCK = threading.Lock()
# On CPU, batches of at most this many padded tokens run side by side, one core each, on a second
# single-threaded session: ORT splits small GEMMs badly over threads (docs/design.md, "Side by side").
SIDE_BY_SIDE_TOKENS = 1024
# The side session holds a second copy of the weights: by default only for a graph this small
# (docs/design.md, "Side by side"). `side_by_side=True` opens it for any graph, False never.
SIDE_SESSION_MAX_BYTES = 64 * 2**20
# A session's memory per byte of graph file where that is not ~1: the CPU provider keeps an fp16
# graph's weights in float32 too (docs/design.md, "Side by side").
CPU_RESIDENT_FACTOR = {"fp16": 3}
# On a GPU, texts go this many at a time and the next slice is tokenized while the GPU runs this one:
# the host's tokenizing is most of the time there (docs/design.md, "Pipelined tokenizing").
PIPELINE_TEXTS = 2048


def choose_precisions(manifest: Manifest, precision: str, device: str) -> list[str]:
    """Precisions to try, in order, for `precision` on `device` ('cpu' or 'cuda:N').

    'auto' prefers int8 on CPU and fp16 on CUDA when the folder holds one that passed its parity
    check at export, then float32. An explicit precision is tried alone, except that 'fp32' may run
    either float32 graph: on CPU the plain exporter graph first, because onnxruntime's CPU kernels
    for the fused operators are slower there (docs/design.md, "Fused or plain"), on CUDA the fused one.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISION_CHOICES}")
    held = {name for name, variant in manifest.variants.items() if variant.parity.get("passed", False)}
    fp32 = ["fp32", "fp32-unfused"] if device.startswith("cuda") else ["fp32-unfused", "fp32"]
    if precision == "auto":
        order = ["fp16" if device.startswith("cuda") else "int8", *fp32]
    elif precision == "fp32":
        order = fp32
    else:
        order = [precision]
    chosen = [name for name in order if name in held]
    if not chosen:
        raise ModelFolderError(
            f"the model folder holds no {precision!r} variant that passed its parity check "
            f"(it holds: {sorted(held) or 'none'}). Choose one of those, or re-export to add it"
        )
    return chosen


@dataclass
class OpenModel:
    """A model folder opened for inference: what `Embedder` and `Reranker` are built on."""

    path: Path
    manifest: Manifest
    tokenizer: TextTokenizer
    session: object
    precision: str
    device: str
    input_names: tuple[str, ...]
    output_name: str
    threads: int = 1
    file: Path | None = None
    choice: object = None
    exact_int8: bool | None = False
    spinning: bool | str = True
    side_by_side: bool = True
    pipelined: bool = False  # tokenize the next texts while this slice runs (encode_and_run)
    files: tuple = ()  # the graph and its data file, as opened
    identity: tuple = ()  # their (device, inode, size, mtime) then: a re-export replaces them (_side_by_side)
    _side: object = None  # (single-threaded session, executor) once side-by-side runs are used
    _release: object = None  # onnxruntime.RunOptions, made on first use
    _split_warned: bool = False

    @classmethod
    def open(cls, path, *, kind: str, precision: str, device: str, threads: int | None,
             spinning: bool | str = True, verify: bool = True, side_by_side: bool | None = None) -> "OpenModel":
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if not (isinstance(spinning, bool) or spinning == "runs"):
            raise ValueError(f"spinning must be True (spin during and between runs), 'runs' (during runs only) "
                             f"or False (never), got {spinning!r}")
        if side_by_side is not None and not isinstance(side_by_side, bool):
            raise ValueError(f"side_by_side must be True, False or None (by the graph's size), got {side_by_side!r}")
        path = Path(os.fspath(path))
        manifest = load_manifest(path)
        hint = rebuild_hint(path, manifest.provenance.get("source"))
        if manifest.kind != kind:
            cls_name, command = ("Reranker", "rerank") if manifest.kind == "reranker" else ("Embedder", "embed")
            raise ModelFolderError(
                f"{path} holds {_a(manifest.kind)} model, not {_a(kind)}: open it with bgeort.{cls_name} "
                f"(on the command line: bgeort {command})"
            )
        tokenizer_path = path / manifest.tokenizer_file
        _check_file(tokenizer_path, manifest.tokenizer_sha256, verify, hint)
        try:
            tokenizer = TextTokenizer(tokenizer_path, max_length=manifest.max_length)
        except ModelFolderError as exc:
            raise ModelFolderError(f"{exc}. Rebuild the folder with: {hint}") from None
        import_onnxruntime()  # a missing or broken install is reported before anything else
        errors = []
        for choice in choose_providers(device, available_providers()):
            for name in choose_precisions(manifest, precision, choice.device):
                variant = manifest.variants[name]
                files = [(path / file, sha256) for file, sha256 in variant.files()]
                for file, _ in files:  # the graph, and the data file holding its weights if it has one
                    if not file.is_file():
                        role = "" if file.name == variant.file else f" (the weights of {variant.file})"
                        raise ModelFolderError(f"{file}{role} is missing from the model folder. "
                                               f"Rebuild it with: {hint}")
                file = files[0][0]
                # The hash runs beside the session's creation (hashlib releases the GIL); it is
                # checked first on every path, so a corrupt file is reported as corrupt. A hasher
                # per open, so no thread of bgeort's outlives the models (close(), issue 20).
                identity = _identity(f for f, _ in files)
                exact_int8 = _needs_exact_kernels(variant)
                failure = None
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgeort-sha256") as hasher:
                    hashing = hasher.submit(_check_files, files, verify, hint)
                    try:
                        session = open_session(str(file), choice, threads=threads, spinning=spinning,
                                               exact_int8=exact_int8, tf32=not name.startswith("fp32"))
                    except Exception as exc:  # onnxruntime raises its own types for unloadable graphs
                        failure = exc
                    hashing.result()
                if failure is not None:
                    if isinstance(failure, DeviceError):
                        errors.append(failure)
                        break  # this device does not work; the next choice is another device
                    if isinstance(failure, (BgeortError, ValueError, TypeError)):
                        raise failure
                    errors.append(failure)
                    warnings.warn(f"bgeort: could not load {file.name} ({failure}); trying the next variant",
                                  RuntimeWarning, stacklevel=3)
                    continue
                if errors and isinstance(errors[-1], DeviceError):  # device='auto' fell back to the CPU
                    warnings.warn(f"bgeort: running on {choice.device}: {errors[-1]}", RuntimeWarning, stacklevel=3)
                if side_by_side is None:
                    side_by_side = resident_bytes(variant, name, choice.device) <= SIDE_SESSION_MAX_BYTES
                output = variant.output or manifest.output
                return cls(path, manifest, tokenizer, session, name, choice.device,
                           _model_inputs(session, manifest, output, file, hint), output,
                           threads=default_threads() if threads is None else threads, file=file, choice=choice,
                           exact_int8=exact_int8, spinning=spinning, side_by_side=side_by_side,
                           pipelined=choice.device != "cpu", files=tuple(f for f, _ in files),
                           identity=identity)
        if len(errors) == 1 and isinstance(errors[0], DeviceError):
            raise errors[0]
        raise BgeortError(f"no variant of {path} could be opened on device={device!r}: " +
                          "; ".join(str(exc) for exc in errors))

    def encode_and_run(self, items: list, encode: Callable[[list], Encoded], *, batch_size: int,
                       max_tokens: int | None, reduce, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokenize `items` with `encode` and run them (run_batches); returns the rows in input order,
        which inputs were truncated and how many tokens each ran as. Pipelined models take
        PIPELINE_TEXTS at a time, tokenizing the next slice on a second thread while this one runs."""
        if not self.pipelined or len(items) <= PIPELINE_TEXTS:
            encoded = encode(items)
            return self.run_batches(encoded, batch_size=batch_size, max_tokens=max_tokens, reduce=reduce,
                                    width=width), encoded.truncated, encoded.lengths
        out = np.empty((len(items), width), dtype=np.float32)
        truncated = np.empty(len(items), dtype=bool)
        lengths = np.empty(len(items), dtype=np.int64)
        starts = range(0, len(items), PIPELINE_TEXTS)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bgeort-tokenize") as tokenizing:
            pending = tokenizing.submit(encode, items[:PIPELINE_TEXTS])
            for start in starts:
                encoded = pending.result()
                following = start + PIPELINE_TEXTS
                if following < len(items):
                    pending = tokenizing.submit(encode, items[following:following + PIPELINE_TEXTS])
                end = start + len(encoded)
                out[start:end] = self.run_batches(encoded, batch_size=batch_size, max_tokens=max_tokens,
                                                  reduce=reduce, width=width)
                truncated[start:end] = encoded.truncated
                lengths[start:end] = encoded.lengths
        return out, truncated, lengths

    def run_batches(self, encoded: Encoded, *, batch_size: int, max_tokens: int | None,
                    reduce: Callable[[np.ndarray, dict], np.ndarray], width: int) -> np.ndarray:
        """Run every input through the model, batched by length; `reduce` maps (output, feed) to
        one row of `width` values per input. Rows come back in input order."""
        out = np.empty((len(encoded), width), dtype=np.float32)

        def collect(indices: np.ndarray, results: list, arrays: dict) -> None:
            out[indices] = reduce(results[0], arrays)

        self.run_each(encoded, batch_size=batch_size, max_tokens=max_tokens, outputs=(self.output_name,),
                      collect=collect)
        return out

    def run_each(self, encoded: Encoded, *, batch_size: int, max_tokens: int | None, outputs: tuple[str, ...],
                 collect: Callable[[np.ndarray, list, dict], None]) -> None:
        """Run every input through the model, batched by length, fetching the graph outputs `outputs`;
        `collect(indices, results, feed)` takes each batch's results (one array per output, rows in
        the order of `indices`). Batches may run on several threads at once, each with its own indices."""
        if self.session is None:
            raise BgeortError(f"the model {self.path} was closed; open the folder again to use it")
        names = list(outputs)

        def run(indices: np.ndarray, session, options=None) -> None:
            arrays = self.tokenizer.pad(encoded, indices)
            feed = {name: arrays[name] for name in self.input_names}
            try:
                if self.device == "cpu":
                    results = session.run(names, feed, options)
                else:
                    results = run_bound(session, feed, names, self.device)
            except Exception as exc:  # onnxruntime raises its own types
                if len(indices) == 1 or not out_of_memory(exc):
                    raise
                self._warn_split(len(indices), exc)  # the batch did not fit: its halves may
                half = len(indices) // 2
                run(indices[:half], session, options)
                run(indices[half:], session, options)
                return
            collect(indices, results, arrays)

        batches = plan_batches(encoded.lengths, batch_size=batch_size, max_tokens=max_tokens,
                               max_attention=attention_budget(self.device))
        fits = [len(b) * int(encoded.lengths[b].max()) <= SIDE_BY_SIDE_TOKENS for b in batches]
        release = None if all(fits) else self._release_after()  # small runs reuse a small arena
        if self.device == "cpu" and self.threads > 1 and self.side_by_side and sum(fits) > 1:
            side = self._side_by_side()
            if side is not None:
                session, executor = side
                for done in [executor.submit(run, b, session) for b, fit in zip(batches, fits) if fit]:
                    done.result()
                batches = [b for b, fit in zip(batches, fits) if not fit]
        # Longest first: the largest buffers are allocated once, up front. After a call with large
        # batches, the last one hands the arena's free memory back (_release_after).
        for i, indices in enumerate(batches):
            run(indices, self.session, release if i == len(batches) - 1 else None)
        if release is not None:
            trim_heap()

    def _warn_split(self, rows: int, exc: Exception) -> None:
        if not self._split_warned:
            self._split_warned = True
            warnings.warn(f"bgeort: a batch of {rows} inputs ran out of memory on {self.device} and runs in halves "
                          f"({str(exc).splitlines()[0][:160]}); a smaller max_batch_tokens avoids the retries",
                          RuntimeWarning, stacklevel=6)

    def _release_after(self):
        """Run options that shrink the CPU arena when the run ends: onnxruntime otherwise keeps every
        block it ever allocated (docs/design.md, "Memory between calls")."""
        if self.device != "cpu":
            return None
        if self._release is None:
            ort = import_onnxruntime()
            options = ort.RunOptions()
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            self._release = options
        return self._release

    def close(self) -> None:
        """Stop the side-by-side runner threads and drop the sessions; the model cannot run after."""
        with _SIDE_LOCK:
            side, self._side = self._side, None
        if side is not None:
            side[1].shutdown(wait=True)
        self.session = None

    def _side_by_side(self):
        """The side session and its executor, opened on first use; None when the folder's files were
        replaced since the main session opened them (a re-export): the side session would run the new ones."""
        with _SIDE_LOCK:  # callers on several threads open it once
            if self.session is None:
                raise BgeortError("this model was closed; open the folder again to use it")
            if self._side is None and self.side_by_side and _identity(self.files) != self.identity:
                self.side_by_side = False
                warnings.warn(f"bgeort: {self.path} was replaced after it was opened; this model keeps running "
                              "the files it opened, without its side-by-side session. Open it again to use "
                              "the new files", RuntimeWarning, stacklevel=5)
            if not self.side_by_side:
                return None
            if self._side is None:
                # memory patterns on: two sessions allocating side by side without them ran short
                # texts ~20% slower (bge-small shape int8), and small batches keep the patterns small
                session = open_session(str(self.file), self.choice, threads=1, spinning=self.spinning,
                                       exact_int8=self.exact_int8, memory_patterns=True)
                self._side = (session, ThreadPoolExecutor(self.threads, thread_name_prefix="bgeort-run"))
        return self._side


# What onnxruntime's CPU and CUDA allocators say when a run does not fit in memory.
_OUT_OF_MEMORY = ("failed to allocate memory", "is smaller than requested bytes", "out of memory", "bad_alloc",
                  "alloc_failed")


def out_of_memory(exc: Exception) -> bool:
    message = str(exc).lower()
    return any(words in message for words in _OUT_OF_MEMORY)


def _identity(files) -> tuple:
    identity = []
    for file in files:
        try:
            stat = os.stat(file)
        except OSError:
            identity.append(None)
        else:
            identity.append((stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(identity)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


_LIBC_TRIM = []  # [glibc's malloc_trim, or None where there is none], looked up once


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; elsewhere nothing).

    After the arena shrinks (_release_after) glibc keeps the freed blocks in its heap (docs/design.md,
    "Memory between calls"). Returns whether it ran."""
    if not _LIBC_TRIM:
        trim = None
        if os.name == "posix":
            import ctypes

            try:  # the symbols already loaded into this process: glibc's, on Linux
                trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only (not musl, macOS)
            except OSError:
                trim = None
            if trim is not None:
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        _LIBC_TRIM.append(trim)
    if _LIBC_TRIM[0] is None:
        return False
    _LIBC_TRIM[0](0)
    return True


def run_bound(session, feed: dict[str, np.ndarray], outputs: list[str], device: str) -> list[np.ndarray]:
    """One run with IOBinding: inputs copied to the device once, the outputs left there by the run
    and copied back whole once (for a graph that pools inside, one row per text)."""
    kind, _, index = device.partition(":")
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_cpu_input(name, array)
    for output in outputs:
        binding.bind_output(output, kind, int(index or 0))
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def resident_bytes(variant, name: str, device: str) -> int:
    """About how much memory a session of `variant` (precision `name`) holds on `device`."""
    factor = CPU_RESIDENT_FACTOR.get(name, 1) if device == "cpu" else 1
    return factor * variant.total_bytes


def _needs_exact_kernels(variant) -> bool | None:
    """None (decide by this CPU) for an int8 graph with 8-bit weights, which x86 CPUs without VNNI
    must run on exact kernels (session.exact_int8_kernels_needed); False otherwise: 7-bit weights
    (and graphs without integer MatMuls) are exact on the fast kernels everywhere."""
    return None if variant.weight_bits == 8 else False


def _model_inputs(session, manifest: Manifest, output: str, file: Path, hint: str) -> tuple[str, ...]:
    """The graph's input names, once its inputs and the output bgeort reads agree with the manifest."""
    names = tuple(node.name for node in session.get_inputs())
    unknown = [name for name in names if name not in ("input_ids", "attention_mask", "token_type_ids")]
    if unknown:
        raise ModelFolderError(f"the ONNX graph asks for inputs {unknown} that bgeort does not feed")
    outputs = {node.name: node.shape for node in session.get_outputs()}
    if output not in outputs:
        raise ModelFolderError(f"{file} has no output {output!r}, which bgeort.json names (it has "
                               f"{sorted(outputs)}). Rebuild the folder with: {hint}")
    width = outputs[output][-1] if outputs[output] else None
    if manifest.kind == "embedder" and isinstance(width, int) and width != manifest.dim:
        raise ModelFolderError(f"{file} gives {width}-dimensional vectors, but bgeort.json says dim {manifest.dim}. "
                               f"Rebuild the folder with: {hint}")
    return names


def _check_files(files: list[tuple[Path, str]], verify: bool, hint: str) -> None:
    for file, expected in files:
        _check_file(file, expected, verify, hint)


def _check_file(file: Path, expected: str, verify: bool, hint: str) -> None:
    if not file.is_file():
        raise ModelFolderError(f"{file} is missing from the model folder. Rebuild it with: {hint}")
    if verify and sha256_file(file) != expected:
        raise ModelFolderError(
            f"{file} does not match the sha256 in bgeort.json (corrupt, or replaced after export). "
            f"Rebuild the folder with: {hint}"
        )
