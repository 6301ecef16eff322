"""One opener per library under test. Each returns (encode, info): encode(list[str]) -> float32
(N, dim) array of the library's final (normalized) vectors, info a dict of what was set.

Every peer runs with its library's default batching (what a user gets), the model's max length
(512 for bge-small, the sentence-transformers config's 256 for MiniLM), and `threads` ONNX
Runtime intra-op threads or torch threads. Import and open are timed separately by the caller.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

BGEORT_PRECISIONS = {"bgeort-int8": "int8", "bgeort-int8-lnstatic": "int8", "bgeort-int8-static": "int8",
                     "bgeort-fp32": "fp32", "bgeort-fp32-unfused": "fp32-unfused", "bgeort-fp16": "fp16"}
# the folder each bgeort peer opens under a model's bench folder
BGEORT_FOLDERS = {"bgeort-int8-static": "bgeort-static", "bgeort-int8-lnstatic": "bgeort-lnstatic"}
# the default export's precisions, one peer each: memory and open time are checked for each of these
BGEORT_SHIPPED = ("bgeort-int8", "bgeort-fp32", "bgeort-fp16")
PEERS = (*BGEORT_PRECISIONS, "st-torch", "st-onnx", "st-onnx-int8", "fastembed", "optimum")
DESCRIPTIONS = {
    "bgeort-int8": "bgeort, int8 (7-bit per-channel weights, per-token uint8 activations, smoothed LayerNorm outputs)",
    "bgeort-int8-lnstatic": "bgeort, int8 exported with --int8-activations layernorm-static (calibrated scales "
                            "for LayerNorm outputs, per token for the rest)",
    "bgeort-int8-static": "bgeort, int8 exported with --int8-activations static (one calibrated scale per tensor)",
    "bgeort-fp32": "bgeort, precision='fp32' (on CPU: the plain exporter graph, faster there than the fused one)",
    "bgeort-fp32-unfused": "bgeort, fp32 plain exporter graph (what precision='fp32' runs on CPU)",
    "bgeort-fp16": "bgeort, precision='fp16' on the CPU (the graph made for CUDA; onnxruntime's CPU provider "
                   "runs it too)",
    "st-torch": "sentence-transformers, PyTorch fp32",
    "st-onnx": "sentence-transformers, ONNX backend fp32 (onnx/model.onnx)",
    "st-onnx-int8": "sentence-transformers, ONNX backend, its own dynamic int8 export",
    "fastembed": "fastembed TextEmbedding on the plain fp32 graph bgeort's CPU fp32 variant is made from",
    "optimum": "optimum ORTModelForFeatureExtraction fp32 + transformers tokenizer, batches of 32 in input order",
}


def import_library(peer: str) -> None:
    """Import what the peer needs (timed by the caller as the library's import cost)."""
    if peer.startswith("bgeort"):
        import bgeort  # noqa: F401
    elif peer.startswith("st-"):
        import sentence_transformers  # noqa: F401
    elif peer == "fastembed":
        import fastembed  # noqa: F401
    elif peer == "optimum":
        import optimum.onnxruntime  # noqa: F401
        import transformers  # noqa: F401
    else:
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def open_peer(peer: str, base: Path, *, threads: int, max_length: int, pooling: str, st_int8_file: str,
              bgeort_max_batch_tokens: int | None = None):
    if peer.startswith("bgeort"):
        return _open_bgeort(base / BGEORT_FOLDERS.get(peer, "bgeort"), BGEORT_PRECISIONS[peer], threads,
                            bgeort_max_batch_tokens)
    if peer == "st-torch":
        return _open_st(base / "src", threads, max_length, backend="torch")
    if peer == "st-onnx":
        return _open_st(base / "src", threads, max_length, backend="onnx", file_name="onnx/model.onnx")
    if peer == "st-onnx-int8":
        return _open_st(base / "src", threads, max_length, backend="onnx", file_name=st_int8_file)
    if peer == "fastembed":
        return _open_fastembed(base / "fastembed", threads, max_length, pooling)
    if peer == "optimum":
        return _open_optimum(base / "src", threads, max_length, pooling)
    raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")


def _ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work
        pass


def _open_bgeort(folder: Path, precision: str, threads: int, max_batch_tokens: int | None):
    import bgeort

    model = bgeort.Embedder(folder, precision=precision, device="cpu", threads=threads,
                            max_batch_tokens=max_batch_tokens)

    def encode(texts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bgeort.TruncationWarning)
            return model.encode(texts)

    info = {"precision": model.precision, "batch_size": model.batch_size, "max_batch_tokens": model.max_batch_tokens,
            "max_length": model.max_length, "file": model.manifest.variants[model.precision].file,
            "model_bytes": model.manifest.variants[model.precision].total_bytes}
    return encode, info


def _open_st(folder: Path, threads: int, max_length: int, *, backend: str, file_name: str | None = None):
    _set_torch_threads(threads)
    from sentence_transformers import SentenceTransformer

    kwargs = {}
    if backend == "onnx":
        kwargs["model_kwargs"] = {"file_name": file_name, "provider": "CPUExecutionProvider",
                                  "session_options": _ort_options(threads)}
    model = SentenceTransformer(str(folder), device="cpu", backend=backend, local_files_only=True, **kwargs)
    model.max_seq_length = max_length

    def encode(texts):
        return model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    info = {"backend": backend, "batch_size": 32, "max_length": model.max_seq_length}
    if file_name:
        info["file"] = file_name
        info["model_bytes"] = (folder / file_name).stat().st_size
    else:
        info["model_bytes"] = (folder / "model.safetensors").stat().st_size
    return encode, info


def _open_fastembed(folder: Path, threads: int, max_length: int, pooling: str):
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"bgeort-bench/{folder.parent.name}"
    if name not in {m["model"] for m in TextEmbedding.list_supported_models()}:
        TextEmbedding.add_custom_model(
            model=name, pooling=PoolingType.CLS if pooling == "cls" else PoolingType.MEAN, normalization=True,
            sources=ModelSource(hf=name), dim=384, model_file="model.onnx")
    model = TextEmbedding(name, specific_model_path=str(folder), threads=threads, local_files_only=True,
                          providers=["CPUExecutionProvider"])
    tokenizer = model.model.tokenizer
    as_loaded = (tokenizer.truncation or {}).get("max_length")
    # Equal work: fastembed truncates where the folder's tokenizer files say; compare at the same length.
    if as_loaded != max_length:
        tokenizer.enable_truncation(max_length=max_length)

    def encode(texts):
        return np.stack(list(model.embed(texts)))

    info = {"batch_size": 256, "truncation_as_loaded": as_loaded, "max_length": max_length,
            "file": "optimum's plain graph, shapes folded (bgeort's CPU fp32 graph before pooling and narrowing)",
            "model_bytes": _graph_bytes(folder / "model.onnx")}
    return encode, info


def _open_optimum(folder: Path, threads: int, max_length: int, pooling: str):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(
        str(folder), subfolder="onnx", file_name="model.onnx", provider="CPUExecutionProvider",
        session_options=_ort_options(threads), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    try:
        _set_torch_threads(threads)  # transformers brings torch in; its tokenizer output stays numpy here
    except ImportError:
        pass

    def encode(texts, batch_size=32):
        out = []
        for start in range(0, len(texts), batch_size):
            feed = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                             max_length=max_length, return_tensors="np")
            hidden = np.asarray(model(**feed).last_hidden_state)
            if pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = feed["attention_mask"][:, :, None].astype(np.float32)
                vectors = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32)

    info = {"batch_size": 32, "max_length": max_length, "file": "onnx/model.onnx",
            "model_bytes": (folder / "onnx" / "model.onnx").stat().st_size}
    return encode, info


def _graph_bytes(graph: Path) -> int:
    """A graph file and the data file of its weights beside it, if it has one (export/graphfile.py)."""
    data = graph.with_name(graph.name + ".data")
    return graph.stat().st_size + (data.stat().st_size if data.is_file() else 0)

