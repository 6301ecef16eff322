"""Where the weights come from (hub id or local folder) and what the folder says about itself."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bgeort.errors import BgeortError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a transformers model folder needs; everything else on the hub (other formats) is skipped.
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*", "2_Normalize/*",
             "sparse_linear.pt", "colbert_linear.pt"]  # bge-m3's heads (export/m3.py)


class ExportError(BgeortError):
    """The export stage cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    given: str  # what the user passed
    root: Path  # the local folder: a transformers folder or a sentence-transformers one
    folder: Path  # the folder with config.json and weights (root, or its Transformer module)
    revision: str | None  # hub commit, None for a local folder


def resolve_source(source: str, *, revision: str | None = None, timeout: float = 10.0) -> Source:
    """A local folder as is, or a hub id downloaded (or found in the hub cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return Source(given=source, root=path, folder=_transformer_folder(path), revision=None)
    if not HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise ExportError(f"source {source!r} is neither an existing folder nor a hub id like BAAI/bge-small-en-v1.5")
    return _download(source, revision=revision, timeout=timeout)


def _download(repo_id: str, *, revision: str | None, timeout: float) -> Source:
    from huggingface_hub import snapshot_download

    offline_fix = (
        f"Without network access, export from a local copy of the model instead: "
        f"make export SOURCE=/path/to/{repo_id.split('/')[-1]} (a transformers or sentence-transformers folder)"
    )
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=True)
    except Exception:  # not in the cache: download below
        folder = None
    if folder is None:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ExportError(f"{repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {offline_fix}")
        try:
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, etag_timeout=timeout)
        except Exception as exc:
            raise ExportError(f"could not download {repo_id} from the Hugging Face hub ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}). {offline_fix}") from exc
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):  # an older repo with .bin weights only (transformers
        try:                                   # reads them with torch's weights-only loader)
            folder = Path(snapshot_download(repo_id, revision=folder.name, allow_patterns=["pytorch_model*.bin"],
                                            etag_timeout=timeout))
        except Exception as exc:
            raise ExportError(f"{repo_id} has no .safetensors weights and its pytorch_model.bin could not be "
                              f"fetched ({type(exc).__name__}). {offline_fix}") from exc
    # snapshot folders are named by commit: .../snapshots/<sha>
    return Source(given=repo_id, root=folder, folder=_transformer_folder(folder), revision=folder.name)


def _transformer_folder(folder: Path) -> Path:
    """The folder holding config.json: the root, or a sentence-transformers Transformer module's."""
    if (folder / "config.json").is_file():
        return folder
    for module in _modules(folder):
        if _module_class(module) == "Transformer":
            candidate = folder / module.get("path", "")
            if (candidate / "config.json").is_file():
                return candidate
    raise ExportError(f"{folder} has no config.json (nor a sentence-transformers Transformer module with one): "
                      "it is not a transformers model folder")


def _modules(folder: Path) -> list[dict]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class FolderFacts:
    """What a model folder's own files say, each with the file it came from."""

    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    notes: dict = field(default_factory=dict)  # every length-like setting found, by file


def read_folder_facts(root: Path, folder: Path, config: dict) -> FolderFacts:
    """Pooling, normalization and max length from sentence-transformers files, and every other
    length setting in the folder, so conflicts are resolved once here and recorded."""
    notes: dict = {}
    pooling = normalize = max_length = None
    modules = _modules(root)
    if modules:
        normalize = any(_module_class(m) == "Normalize" for m in modules)
        for module in modules:
            if _module_class(module) == "Pooling":
                pooling = _pooling_mode(root / module.get("path", "") / "config.json")
    bert_config = folder / "sentence_bert_config.json"
    if bert_config.is_file():
        max_length = json.loads(bert_config.read_text(encoding="utf-8")).get("max_seq_length")
        notes["sentence_bert_config.json max_seq_length"] = max_length
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        model_max_length = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("model_max_length")
        notes["tokenizer_config.json model_max_length"] = model_max_length
        # sentence-transformers 5 no longer writes max_seq_length; it keeps the length here.
        if modules and max_length is None and isinstance(model_max_length, int) and model_max_length < 10**6:
            max_length = model_max_length
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        notes["tokenizer.json truncation"] = data.get("truncation")
        notes["tokenizer.json padding"] = data.get("padding")
    notes["config.json max_position_embeddings"] = config.get("max_position_embeddings")
    return FolderFacts(pooling=pooling, normalize=normalize, max_length=max_length, notes=notes)


def _module_class(module: dict) -> str:
    """'Pooling' from 'sentence_transformers.models.Pooling' (v2-v4) or
    'sentence_transformers.sentence_transformer.modules.pooling.Pooling' (v5)."""
    return module.get("type", "").rsplit(".", 1)[-1]


def _pooling_mode(path: Path) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data.get("pooling_mode"), str):  # sentence-transformers 5: "pooling_mode": "mean"
        modes = [data["pooling_mode"]]
    else:
        modes = [key for key, value in data.items() if key.startswith("pooling_mode") and value]
    table = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "cls": "cls", "mean": "mean"}
    if len(modes) != 1 or modes[0] not in table:
        raise ExportError(f"{path} asks for pooling {modes}; bgeort supports exactly one of "
                          "CLS-token or mean pooling")
    return table[modes[0]]


def position_limit(config: dict) -> int:
    """Longest input the position embeddings allow (RoBERTa-style models reserve padding_idx + 1)."""
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(config.get("pad_token_id", 1)) + 1
    return limit
