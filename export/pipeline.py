"""One export: source -> staged folder (graphs, tokenizer, verified variants, manifest) -> models/<name>.

The folder is built under a temporary name next to its destination and renamed into place only
when complete, so an interrupted export never leaves a folder that looks valid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bgeort.manifest import POOLED_OUTPUT, Manifest, Variant, dump_manifest, sha256_file

from . import attention, graphfile, int8, m3, stages, verify
from .calibration import calibration_texts
from .families import DEFAULT_SOURCE, Family, find_family
from .source import ExportError, FolderFacts, position_limit, read_folder_facts, resolve_source

FILES = {"fp32": "model.onnx", "fp32-unfused": "model_unfused.onnx", "int8": "model_int8.onnx",
         "fp16": "model_fp16.onnx"}
DEVICES = {"fp32": ["cpu", "cuda"], "fp32-unfused": ["cpu", "cuda"], "int8": ["cpu"], "fp16": ["cuda"]}
# Sources past this many bytes of weights run each whole-model stage in a process of its own, so the
# stages' peaks do not pile up (measured: docs/design.md, "Export memory"; bench/export_memory.py).
SEPARATE_STAGES_BYTES = 256 * 2**20
# Past this max length the CPU graphs get attention in linear memory for unpadded batches
# (export/attention.py); at 512 tokens the S x S scores are small (16 heads: 16 MiB a row).
PLAIN_ATTENTION_TOKENS = 512
# Per kind: the model types the stages handle, optimum's task, and the graph output bgeort reads.
KINDS = {
    "embedder": {"model_types": ("bert", "xlm-roberta"), "task": "feature-extraction", "output": "last_hidden_state"},
    "reranker": {"model_types": ("bert", "xlm-roberta"), "task": "text-classification", "output": "logits"},
}


@dataclass(frozen=True)
class Settings:
    """Everything the manifest says about running the model, and where each value came from."""

    kind: str
    name: str
    pooling: str
    normalize: bool
    max_length: int
    query_instruction: str
    passage_instruction: str
    resolved_from: dict
    trust_remote_code: bool = False  # pass it to transformers and optimum (check_remote_code says when)
    heads: str = ""  # "m3": bge-m3's sparse and ColBERT heads go into the graph (export/m3.py)


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def model_kind(config: dict, family: Family | None) -> str:
    """A table row says; otherwise a one-label sequence classifier is a reranker."""
    if family is not None:
        return family.kind
    if any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or []):
        labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
        if labels != 1:
            raise ExportError(f"the source is a sequence classifier with {labels} labels; a bgeort reranker needs "
                              "exactly one relevance logit")
        return "reranker"
    return "embedder"


def resolve_settings(source_given: str, config: dict, facts: FolderFacts, family: Family | None, *,
                     name: str | None, pooling: str | None, max_length: int | None) -> Settings:
    """Settle pooling, normalization and max length once: explicit option, else the family table,
    else the folder's sentence-transformers files. Conflicting values are recorded, never used."""
    limit = position_limit(config)
    kind = model_kind(config, family)
    origin = {}

    def pick(key, explicit, table, folder_value, default=None):
        for where, value in (("option", explicit), ("family table", table), ("sentence-transformers files", folder_value),
                             ("default", default)):
            if value is not None:
                origin[key] = where
                return value
        return None

    if kind == "reranker":
        chosen_pooling = pick("pooling", None, "none", None)
        facts = FolderFacts(normalize=False, max_length=facts.max_length, notes=facts.notes)
    else:
        chosen_pooling = pick("pooling", pooling, family and family.pooling, facts.pooling)
    if chosen_pooling is None:
        raise ExportError(f"{source_given} has no sentence-transformers pooling config and matches no family in "
                          "the table; say how to pool with --pooling cls or --pooling mean")
    normalize = pick("normalize", None, family and family.normalize, facts.normalize, True)
    length = pick("max_length", max_length, family and family.max_length, facts.max_length, limit)
    if length > limit:
        raise ExportError(f"max length {length} ({origin['max_length']}) exceeds the model's {limit} positions")
    folder_name = name or (family.name if family else Path(source_given.rstrip("/")).name)
    return Settings(
        kind=kind,
        name=folder_name,
        pooling=chosen_pooling,
        normalize=bool(normalize),
        max_length=int(length),
        query_instruction=family.query_instruction if family else "",
        passage_instruction=family.passage_instruction if family else "",
        resolved_from={"origin": origin, "found_in_source": facts.notes},
        heads=family.heads if family else "",
    )


def export_model(source: str = DEFAULT_SOURCE, *, out: str | os.PathLike = "models", name: str | None = None,
                 family: str | None = None, pooling: str | None = None, max_length: int | None = None,
                 opset: int | None = None, precisions=("fp32", "int8", "fp16"), revision: str | None = None,
                 int8_weight_bits: int = int8.WEIGHT_BITS, int8_activations: str = "token",
                 separate_stages: bool | None = None, trust_remote_code: bool = False) -> Path:
    """Export `source` and return the path of the finished model folder.

    `separate_stages`: run each memory-heavy stage in a process of its own (default: when the source's
    weights pass SEPARATE_STAGES_BYTES). `trust_remote_code`: let a source that ships its own model
    code run it (refused otherwise: check_remote_code)."""
    int8.check_options(int8_weight_bits, int8_activations)  # before the long part
    resolved = resolve_source(source, revision=revision)
    config = json.loads((resolved.folder / "config.json").read_text(encoding="utf-8"))
    check_remote_code(source, config, trust_remote_code)
    row = find_family(source, family)
    facts = read_folder_facts(resolved.root, resolved.folder, config)
    settings = resolve_settings(source, config, facts, row, name=name, pooling=pooling, max_length=max_length)
    settings = dataclasses.replace(settings, trust_remote_code=trust_remote_code)
    found_heads = m3.head_files(resolved.folder)
    if settings.kind == "embedder" and (settings.heads == "m3" or found_heads):
        m3.require_heads(resolved.folder, source)  # a family row, or any head file, asks for both
        if pooling not in (None, "cls"):
            raise ExportError(f"bge-m3's dense vector is the first token's state; --pooling {pooling} does not apply "
                              "(leave --pooling out)")
        settings = dataclasses.replace(settings, heads="m3", pooling="cls")
    supported = KINDS[settings.kind]["model_types"]
    if config.get("model_type") not in supported:
        raise ExportError(f"{source} is a {config.get('model_type')!r} model; the {settings.kind} export supports "
                          f"{supported}")
    log(f"{source} -> {settings.name}: {settings.kind}{' (bge-m3 heads)' if settings.heads else ''}, "
        f"{row.name if row else 'generic'} path, pooling={settings.pooling}, normalize={settings.normalize}, "
        f"max_length={settings.max_length}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if separate_stages is None:
        separate_stages = _weights_bytes(resolved.folder) > SEPARATE_STAGES_BYTES
    remove_stale_folders(out, settings.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{settings.name}.partial-{os.getpid()}-", dir=out))
    try:
        manifest = _build(resolved, config, settings, staging, opset=opset, precisions=precisions,
                          int8_weight_bits=int8_weight_bits, int8_activations=int8_activations,
                          stage=StageRunner(separate_stages))
        dump_manifest(manifest, staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the model folder is not
        with _locked(out):  # two exports to one name: each swaps a whole folder in
            return _move_into_place(staging, out / settings.name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class StageRunner:
    """Calls a stage function here, or (separate=True) in a fresh child process that exits after it,
    so the memory it held goes back to the system. Arguments and results travel by pickle; an
    ExportError raised in the child is raised here."""

    def __init__(self, separate: bool):
        self.separate = separate

    def __call__(self, fn, *args, **kwargs):
        if not self.separate:
            return fn(*args, **kwargs)
        # spawn, not fork: the child starts clean (no copy of this process's threads or heap)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                return pool.submit(fn, *args, **kwargs).result()
            except BrokenProcessPool:
                raise ExportError(
                    f"the process running the export stage {fn.__module__}.{fn.__name__} died without an error "
                    "(killed; most often out of memory): free memory or export on a larger machine"
                ) from None


def _build(resolved, config: dict, settings: Settings, staging: Path, *, opset, precisions,
           int8_weight_bits: int = int8.WEIGHT_BITS, int8_activations: str = "token",
           stage: StageRunner = StageRunner(False)) -> Manifest:
    layers, heads, hidden = config["num_hidden_layers"], config["num_attention_heads"], config["hidden_size"]
    _write_tokenizer(resolved.folder, staging / "tokenizer.json", trust_remote_code=settings.trust_remote_code)

    log("exporting the ONNX graph with optimum")
    plain = staging / FILES["fp32-unfused"]
    used_opset = stage(stages.export_onnx, resolved.folder, plain, task=KINDS[settings.kind]["task"], opset=opset,
                       trust_remote_code=settings.trust_remote_code)
    multi = None
    if settings.heads == "m3":
        log("adding bge-m3's sparse and ColBERT heads to the graph")
        colbert_dim = stage(m3.add_heads, plain, plain, source_folder=resolved.folder, hidden=hidden)
        multi = {"sparse_output": m3.SPARSE_OUTPUT, "colbert_output": m3.COLBERT_OUTPUT, "colbert_dim": colbert_dim,
                 "unused_token_ids": m3.unused_token_ids(resolved.folder, trust_remote_code=settings.trust_remote_code)}
    built = {"fp32-unfused": {}}
    if precisions:  # int8 and fp16 are made from the fused graph
        log("fusing for ONNX Runtime")
        try:
            built["fp32"] = {"fusions": stage(stages.fuse, plain, staging / FILES["fp32"], num_layers=layers,
                                              num_heads=heads, hidden_size=hidden,
                                              embedding_fusion=config["model_type"] == "bert")}
        except ExportError as exc:
            log(f"fp32 fused graph not written: {exc}")
    if "int8" in precisions:
        log("quantizing to int8")
        texts = calibration_texts()
        ranges = stage(int8.activation_ranges, plain, staging / "tokenizer.json", texts,
                       max_length=settings.max_length, every_input=int8_activations == "static")
        quantized = stage(int8.quantize_int8, plain, staging / FILES["int8"], num_layers=layers, ranges=ranges,
                          weight_bits=int8_weight_bits, activations=int8_activations)
        built["int8"] = {"quantized_ops": {**quantized, "calibration_texts": len(texts)}}
    if "fp16" in precisions and "fp32" in built:
        log("converting to fp16")
        stage(stages.convert_fp16, staging / FILES["fp32"], staging / FILES["fp16"])
        built["fp16"] = {}
        if settings.kind == "embedder" and not multi:  # the CUDA variant pools inside the graph (see add_pooling)
            stage(stages.add_pooling, staging / FILES["fp16"], staging / FILES["fp16"], pooling=settings.pooling)
            built["fp16"] = {"pooled_in_graph": True}

    built["fp32-unfused"] = {"folded_shape_tensors": stage(stages.fold_plain, plain)}
    if not multi and (settings.kind == "reranker" or settings.pooling == "cls"):
        # Only the first token's state is read: the last layer computes that row alone. A CLS
        # embedder's token-state output becomes [batch, 1, dim], still pooled (row 0) in numpy.
        log("computing the last layer for the first token only")
        first_rows = (KINDS["embedder"]["output"],) if settings.kind == "embedder" else ()
        for precision, extra in built.items():
            extra["first_token_nodes"] = stage(stages.first_token_only, staging / FILES[precision],
                                               first_row_outputs=first_rows)
    if multi or settings.max_length > PLAIN_ATTENTION_TOKENS:
        log("adding the mask-free attention path for unpadded batches (memory linear in the length)")
        for precision in ("fp32-unfused", "int8"):
            if precision in built:
                layers_done = stage(attention.add_mask_free_path, staging / FILES[precision], num_heads=heads,
                                    expected_layers=layers, required=bool(multi))
                built[precision]["mask_free_attention_layers"] = layers_done
                if layers_done < layers:
                    log(f"{precision}: the mask-free path fits {layers_done} of {layers} layers; graph left as "
                        "exported (long inputs then need S x S memory per layer)")
    # A provisional manifest lets bgeort itself open the staged folder for the parity checks.
    variants = {p: _variant(staging, p, {"passed": True, **extra}) for p, extra in built.items()}
    dump_manifest(_manifest(resolved, config, settings, staging, variants, used_opset, multi), staging)

    if multi:
        probes = verify.probe_texts(settings.max_length)
        log(f"computing the PyTorch reference (encoder + bge-m3 heads) on {len(probes)} probe texts")
        reference = stage(m3.torch_reference, resolved.folder, probes, max_length=settings.max_length,
                          trust_remote_code=settings.trust_remote_code)
        check = m3.check_variant
    elif settings.kind == "reranker":
        probes = verify.probe_pairs(settings.max_length)
        log(f"computing the PyTorch reference on {len(probes)} probe pairs")
        reference = stage(verify.torch_reranker_reference, resolved.folder, probes, max_length=settings.max_length,
                          trust_remote_code=settings.trust_remote_code)
        check = verify.check_reranker_variant
    else:
        probes = verify.probe_texts(settings.max_length)
        log(f"computing the PyTorch reference on {len(probes)} probe texts")
        reference = stage(verify.torch_reference, resolved.folder, probes, pooling=settings.pooling,
                          normalize=settings.normalize, max_length=settings.max_length,
                          trust_remote_code=settings.trust_remote_code)
        check = verify.check_variant
    checked = {}
    for precision, extra in built.items():
        parity = {**stage(check, staging, precision, probes, reference), **extra}
        status = "ok" if parity["passed"] else "FAILED: " + "; ".join(parity["failures"])
        numbers = ", ".join(f"{key} {value:.6g}" for key, value in parity.items()
                            if key in ("max_abs_diff", "min_cosine", "mean_cosine", "spearman", "top1_agreement",
                                       *m3.THRESHOLDS["fp32"], *m3.THRESHOLDS["int8"], *m3.THRESHOLDS["fp16"]))
        log(f"{precision:13s} {numbers}  {status}")
        if parity["passed"]:
            checked[precision] = _variant(staging, precision, parity)
        else:
            graphfile.remove_graph(staging / FILES[precision])
            log(f"{precision} variant not written")
    if not ({"fp32", "fp32-unfused"} & set(checked)):
        raise ExportError("no fp32 graph matched the PyTorch reference; nothing was written")
    manifest = _manifest(resolved, config, settings, staging, checked, used_opset, multi)
    if settings.kind == "embedder":  # what int8/uint8 stored vectors are scaled by (bgeort/quantize.py)
        log("measuring the vectors' per-dimension ranges for int8/uint8 storage")
        dump_manifest(manifest, staging)
        manifest = dataclasses.replace(manifest, quantization_ranges=stage(stages.vector_ranges, staging,
                                                                           calibration_texts()))
    return manifest


def _variant(staging: Path, precision: str, parity: dict) -> Variant:
    file = staging / FILES[precision]
    output = POOLED_OUTPUT if parity.get("pooled_in_graph") else None
    weight_bits = (parity.get("quantized_ops") or {}).get("weight_bits")
    data = graphfile.data_file(file)  # the weights of a graph past 16 MiB of them, hashed and listed like it
    if data is not None:
        graphfile.match_permissions(file, data)
    data_fields = {} if data is None else {"data_file": data.name, "data_sha256": sha256_file(data),
                                           "data_bytes": data.stat().st_size}
    return Variant(file=file.name, sha256=sha256_file(file), bytes=file.stat().st_size,
                   devices=tuple(DEVICES[precision]), parity=parity, output=output, weight_bits=weight_bits,
                   **data_fields)


def _manifest(resolved, config, settings: Settings, staging: Path, variants: dict, opset: int,
              multi: dict | None = None) -> Manifest:
    return Manifest(
        kind=settings.kind,
        name=settings.name,
        pooling=settings.pooling,
        normalize=settings.normalize,
        max_length=settings.max_length,
        dim=int(config["hidden_size"]) if settings.kind == "embedder" else 1,
        query_instruction=settings.query_instruction,
        passage_instruction=settings.passage_instruction,
        tokenizer_file="tokenizer.json",
        tokenizer_sha256=sha256_file(staging / "tokenizer.json"),
        inputs=tuple(stages.graph_inputs(staging / FILES["fp32-unfused"])),
        output=POOLED_OUTPUT if multi else KINDS[settings.kind]["output"],  # bge-m3's graph gives the CLS rows
        variants=variants,
        provenance={
            "source": resolved.given,
            "revision": resolved.revision,
            "weights_sha256": _weights_digest(resolved.folder),
            "model_type": config.get("model_type"),
            "layers": config.get("num_hidden_layers"),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "opset": opset,
            "versions": _versions(),
            "export_cpu": _export_cpu(),
            "settings_from": settings.resolved_from,
        },
        m3=multi,
    )


def _write_tokenizer(model_folder: Path, out_file: Path, *, trust_remote_code: bool = False) -> None:
    """The source's fast tokenizer as tokenizer.json with its padding and truncation cleared: the
    runtime sets those from the manifest, and other tools reading the file must not inherit them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder), use_fast=True, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ExportError(f"{model_folder} has no fast (Rust) tokenizer; bgeort needs tokenizer.json")
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["padding"] = None
    data["truncation"] = None
    out_file.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))


def _weights_digest(folder: Path) -> dict:
    return {path.name: sha256_file(path) for path in _weight_files(folder)}


def _weights_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in _weight_files(folder))


def _export_cpu() -> dict:
    """The CPU the parity numbers were measured on (int8 kernels differ with VNNI and AVX-512)."""
    from bgeort.doctor import cpu_facts

    try:
        return cpu_facts(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def _versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for dist in ("bgeort", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def check_remote_code(source: str, config: dict, trusted: bool) -> None:
    """Refuse a source whose config asks to run its own model code (`auto_map`), unless trusted: that
    code would run here with the user's rights, and the graph would be traced from it."""
    custom = config.get("auto_map")
    if custom and not trusted:
        raise ExportError(
            f"{source} ships its own model code (config.json auto_map: {json.dumps(custom)[:200]}), which "
            "transformers would run in this process. Export it only if you trust that code: "
            "python -m export SOURCE --trust-remote-code (make export SOURCE=... EXPORT_ARGS=--trust-remote-code)")


def remove_stale_folders(out: Path, name: str) -> list[Path]:
    """Remove the staging and swap folders (.NAME.partial-PID-*, .NAME.old-PID-*) that an export killed
    before its cleanup left behind: those whose process is gone."""
    removed = []
    for path in out.glob(f".{name}.*-*"):
        kind, _, rest = path.name[len(name) + 2:].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("partial", "old") and path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the folder itself (flock on its descriptor): no lock file is left behind."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _move_into_place(staging: Path, target: Path) -> Path:
    """Swap the finished folder in. At the target there is only ever a complete folder (old or new,
    or for an instant none); the old one is removed only after the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
