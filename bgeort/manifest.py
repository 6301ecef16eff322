"""The model folder's manifest, `bgeort.json`: the runtime's only source of truth.

Stdlib only. The export stage writes it with `dump_manifest`; the runtime reads it with
`load_manifest`, which rejects anything it does not understand rather than guessing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelFolderError

MANIFEST_NAME = "bgeort.json"
FORMAT_NAME = "bgeort-model"
FORMAT_VERSION = 1

KINDS = ("embedder", "reranker")
POOLINGS = ("cls", "mean", "none")  # "none": a reranker's graph ends in its classifier
# Precisions a folder may hold. "fp32" is the ONNX Runtime-fused graph (CUDA runs it first); "fp32-unfused"
# is the plain exporter graph (CPU runs it first: bgeort.model.choose_precisions says why).
PRECISIONS = ("fp32", "fp32-unfused", "int8", "fp16")
# The output of a graph that pools inside (the fp16/CUDA variant): one row per text.
POOLED_OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class Variant:
    """One ONNX file of the folder at one precision, with what export measured about it."""

    file: str
    sha256: str
    bytes: int
    devices: tuple[str, ...]
    parity: dict = field(default_factory=dict)
    # The graph output bgeort reads, when it is not the manifest's `output`: "sentence_embedding"
    # for a graph that pools inside (so a GPU copies back one row per text, not every token's state).
    output: str | None = None
    # int8 only: the weights' width. 8-bit weights need exact kernels on x86 CPUs without VNNI
    # (bgeort/session.py); 7-bit ones (the default export) do not.
    weight_bits: int | None = None
    # A graph with more than 16 MiB of weights keeps them in one data file beside it (ONNX external
    # data, named inside the graph; export/graphfile.py), hashed and checked as `file` is.
    data_file: str | None = None
    data_sha256: str | None = None
    data_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        """The graph file and its data file, if it has one."""
        return self.bytes + (self.data_bytes or 0)

    def files(self) -> list[tuple[str, str]]:
        """(file name, sha256) of every file the variant needs: the graph, then its data file."""
        return [(self.file, self.sha256)] + ([(self.data_file, self.data_sha256)] if self.data_file else [])


@dataclass(frozen=True)
class Manifest:
    """What a model folder holds and how to run it."""

    kind: str
    name: str
    pooling: str
    normalize: bool
    max_length: int
    dim: int
    query_instruction: str
    passage_instruction: str
    tokenizer_file: str
    tokenizer_sha256: str
    inputs: tuple[str, ...]
    output: str
    variants: dict[str, Variant]
    provenance: dict
    format_version: int = FORMAT_VERSION
    # per-dimension {"min": [...], "max": [...], "corpus": ..., "texts": N} of the float32 vectors of
    # export/calibration.py's texts: what int8/uint8 stored vectors are scaled by (bgeort/quantize.py)
    quantization_ranges: dict | None = None
    # bge-m3 folders only: the graph's per-token outputs beside the dense vector (which is `output`),
    # {"sparse_output", "colbert_output", "colbert_dim", "unused_token_ids"} (bgeort/m3.py reads them)
    m3: dict | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["inputs"] = list(self.inputs)
        for variant in data["variants"].values():
            variant["devices"] = list(variant["devices"])
            for optional in _VARIANT_OPTIONAL:
                if variant[optional] is None:
                    del variant[optional]
        for optional in _TOP_LEVEL_OPTIONAL:
            if data[optional] is None:
                del data[optional]
        return {"format": FORMAT_NAME, **data}


# key -> accepted types, for the top level and for each variant. Anything else is an error.
_TOP_LEVEL = {
    "format": (str,),
    "format_version": (int,),
    "kind": (str,),
    "name": (str,),
    "pooling": (str,),
    "normalize": (bool,),
    "max_length": (int,),
    "dim": (int,),
    "query_instruction": (str,),
    "passage_instruction": (str,),
    "tokenizer_file": (str,),
    "tokenizer_sha256": (str,),
    "inputs": (list,),
    "output": (str,),
    "variants": (dict,),
    "provenance": (dict,),
}
_TOP_LEVEL_OPTIONAL = {"quantization_ranges": (dict,), "m3": (dict,)}
_M3 = {"sparse_output": (str,), "colbert_output": (str,), "colbert_dim": (int,), "unused_token_ids": (list,)}
_VARIANT = {"file": (str,), "sha256": (str,), "bytes": (int,), "devices": (list,), "parity": (dict,)}
_VARIANT_OPTIONAL = {"output": (str,), "weight_bits": (int,), "data_file": (str,), "data_sha256": (str,),
                     "data_bytes": (int,)}
_DATA_FIELDS = ("data_file", "data_sha256", "data_bytes")


def rebuild_hint(folder: str | os.PathLike, source: str | None = None) -> str:
    """The command that rebuilds the model folder, for error messages."""
    folder = Path(folder)
    src = source or "<hub id or local model directory>"
    return f"make export SOURCE={src} NAME={folder.name} OUT={folder.parent}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dump_manifest(manifest: Manifest, folder: str | os.PathLike) -> Path:
    """Write `bgeort.json` into folder (validated first, so we never write what we cannot read)."""
    data = manifest.to_dict()
    parse_manifest(data, Path(folder) / MANIFEST_NAME)
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_manifest(folder: str | os.PathLike) -> Manifest:
    """Read and validate `<folder>/bgeort.json`. Raises ModelFolderError naming the file and the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(
            f"model folder {str(folder)!r} does not exist or is not a folder. "
            f"Build it with: {rebuild_hint(folder)}"
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"{path} is missing, so {folder} is not a complete bgeort model folder "
            f"(an interrupted export leaves none). Rebuild it with: {rebuild_hint(folder)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(
            f"{path} is not readable JSON ({exc}). Rebuild the folder with: {rebuild_hint(folder)}"
        ) from exc
    return parse_manifest(data, path)


def parse_manifest(data: object, path: Path) -> Manifest:
    folder = path.parent
    source = None
    if isinstance(data, dict) and isinstance(data.get("provenance"), dict):
        source = data["provenance"].get("source")
    hint = rebuild_hint(folder, source if isinstance(source, str) else None)

    def fail(problem: str) -> ModelFolderError:
        return ModelFolderError(f"{path}: {problem}. Rebuild the folder with: {hint}")

    if not isinstance(data, dict):
        raise fail("the manifest is not a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise fail(f"'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise fail(f"'format_version' is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format_version {version}, newer than this bgeort reads ({FORMAT_VERSION}). "
            f"Upgrade bgeort (pip install -U bgeort), or rebuild the folder with this version: {hint}"
        )
    if version < 1:
        raise fail(f"'format_version' {version} is not a version bgeort ever wrote")
    _check_keys(data, _TOP_LEVEL, "the manifest", fail, optional=_TOP_LEVEL_OPTIONAL)
    if data["kind"] not in KINDS:
        raise fail(f"'kind' is {data['kind']!r}, expected one of {KINDS}")
    if data["pooling"] not in POOLINGS:
        raise fail(f"'pooling' is {data['pooling']!r}, expected one of {POOLINGS}")
    for key in ("max_length", "dim"):
        if data[key] < 1:
            raise fail(f"'{key}' is {data[key]}, expected a positive integer")
    if not data["inputs"] or not all(isinstance(name, str) for name in data["inputs"]):
        raise fail("'inputs' must be a non-empty list of input names")
    if not _plain_name(data["tokenizer_file"]):
        raise fail(f"'tokenizer_file' is {data['tokenizer_file']!r}, which is not a plain file name in the folder")
    if not data["variants"]:
        raise fail("'variants' is empty: the folder holds no model file")
    variants = {}
    for precision, entry in data["variants"].items():
        if precision not in PRECISIONS:
            raise fail(f"unknown precision {precision!r} in 'variants' (known: {PRECISIONS})")
        if not isinstance(entry, dict):
            raise fail(f"variant {precision!r} is not an object")
        _check_keys(entry, _VARIANT, f"variant {precision!r}", fail, optional=_VARIANT_OPTIONAL)
        given = [key for key in _DATA_FIELDS if key in entry]
        if given and len(given) != len(_DATA_FIELDS):
            raise fail(f"variant {precision!r} has {given} but not all of {list(_DATA_FIELDS)}")
        for name in (entry["file"], entry.get("data_file")):
            if name is not None and not _plain_name(name):
                raise fail(f"variant {precision!r} names {name!r}, which is not a plain file name in the folder")
        if entry.get("data_file") == entry["file"]:
            raise fail(f"variant {precision!r} names {entry['file']!r} as both its graph and its data file")
        variants[precision] = Variant(
            file=entry["file"],
            sha256=entry["sha256"],
            bytes=entry["bytes"],
            devices=tuple(entry["devices"]),
            parity=entry["parity"],
            output=entry.get("output"),
            weight_bits=entry.get("weight_bits"),
            data_file=entry.get("data_file"),
            data_sha256=entry.get("data_sha256"),
            data_bytes=entry.get("data_bytes"),
        )
    if "quantization_ranges" in data:
        _check_ranges(data["quantization_ranges"], data["dim"], fail)
    if "m3" in data:
        _check_keys(data["m3"], _M3, "'m3'", fail)
        if data["kind"] != "embedder" or data["m3"]["colbert_dim"] < 1 or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in data["m3"]["unused_token_ids"]):
            raise fail("'m3' needs an embedder, a positive 'colbert_dim' and non-negative integer 'unused_token_ids'")
    fields = {key: data[key] for key in [*_TOP_LEVEL, *_TOP_LEVEL_OPTIONAL] if key != "format" and key in data}
    fields["inputs"] = tuple(data["inputs"])
    fields["variants"] = variants
    return Manifest(**fields)


def _plain_name(name: str) -> bool:
    """A file directly in the folder: nothing is read from outside it (a symlink in it is fine: its sha256 is checked)."""
    return Path(name).name == name and name not in ("", ".", "..") and "\\" not in name


def _check_keys(data: dict, schema: dict, what: str, fail, optional: dict | None = None) -> None:
    optional = optional or {}
    unknown = sorted(set(data) - set(schema) - set(optional))
    if unknown:
        raise fail(f"{what} has unknown keys {unknown} (written by a different bgeort?)")
    missing = sorted(set(schema) - set(data))
    if missing:
        raise fail(f"{what} lacks required keys {missing}")
    for key, types in [*schema.items(), *((k, t) for k, t in optional.items() if k in data)]:
        value = data[key]
        # bool is an int in Python; a manifest that says `"dim": true` is still wrong.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise fail(f"{what}: {key!r} is {value!r}, expected {' or '.join(t.__name__ for t in types)}")


def _check_ranges(ranges: dict, dim: int, fail) -> None:
    """quantization_ranges: 'min' and 'max' lists of `dim` finite numbers, min <= max, and where they came from."""
    _check_keys(ranges, {"min": (list,), "max": (list,), "corpus": (str,), "texts": (int,)},
                "'quantization_ranges'", fail)
    for key in ("min", "max"):
        values = ranges[key]
        if len(values) != dim or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) for v in values):
            raise fail(f"'quantization_ranges'.{key!r} must be {dim} finite numbers (one per dimension)")
    if any(low > high for low, high in zip(ranges["min"], ranges["max"])):
        raise fail("'quantization_ranges' has a dimension whose 'min' is above its 'max'")
