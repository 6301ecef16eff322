"""bge-m3's two heads, put into the graph, and the PyTorch reference every variant is checked against.

bge-m3 is an encoder (XLM-RoBERTa) plus two linear layers that FlagEmbedding keeps beside the weights:
`sparse_linear.pt` (hidden -> 1: a weight per token) and `colbert_linear.pt` (hidden -> hidden: a vector
per token). The exported graph computes the encoder and both heads in one run, so int8 and fp16 apply
to the heads as well; the per-id aggregation, special-token dropping and normalization run in numpy
(bgeort/m3.py). The head files are read here, at export, with a weights-only load, and never at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import graphfile
from .source import ExportError

HEAD_FILES = {"sparse": "sparse_linear.pt", "colbert": "colbert_linear.pt"}
SPARSE_OUTPUT = "sparse_weights"  # [batch, seq]: relu(h W_sparse + b) per token
COLBERT_OUTPUT = "colbert_vecs"  # [batch, seq - 1, colbert_dim]: colbert_linear(h[:, 1:]), not normalized
HIDDEN_OUTPUT = "last_hidden_state"
# The special tokens FlagEmbedding drops from the lexical weights (by the tokenizer's special_tokens_map).
UNUSED_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")

# Per precision, the bounds of the parity check (names: `compare`). fp32: the 1e-4 on every
# output with the same sparse ids. int8: about ten times the distance from PyTorch that real weights
# measured; fp16: room for CUDA's kernels over the CPU's 1e-6 (docs/m3.md, "Parity bars").
THRESHOLDS = {
    "fp32": {"dense_max_abs_diff": 1e-4, "colbert_max_abs_diff": 1e-4, "sparse_max_abs_diff": 1e-4,
             "sparse_id_sets_equal": 1.0},
    "fp32-unfused": {"dense_max_abs_diff": 1e-4, "colbert_max_abs_diff": 1e-4, "sparse_max_abs_diff": 1e-4,
                     "sparse_id_sets_equal": 1.0},
    "int8": {"dense_mean_cosine": 0.99, "dense_min_cosine": 0.98, "colbert_mean_cosine": 0.98,
             "colbert_min_cosine": 0.9, "sparse_top10_agreement": 0.8},
    "fp16": {"dense_min_cosine": 0.999, "colbert_min_cosine": 0.995, "sparse_top10_agreement": 0.9},
}
# A sparse id whose weight is below this on one side and absent on the other is a tie at zero, not a
# different id set (relu of a value within rounding of 0).
SPARSE_ZERO = 1e-4


def head_files(folder: Path) -> dict[str, Path]:
    """The head files present in `folder`, by head."""
    return {head: Path(folder) / name for head, name in HEAD_FILES.items() if (Path(folder) / name).is_file()}


def require_heads(folder: Path, source: str) -> None:
    """Both head files, or an ExportError: FlagEmbedding would silently run random heads instead."""
    found = head_files(folder)
    missing = [HEAD_FILES[head] for head in HEAD_FILES if head not in found]
    if missing:
        raise ExportError(
            f"{source} is exported as bge-m3 but {Path(folder)} lacks {' and '.join(missing)}: without them the "
            "sparse and ColBERT outputs would come from untrained layers (FlagEmbedding silently makes random "
            "ones). Put the files from the model's hub page beside its config.json and export again")


def read_heads(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """{"sparse": {"weight": [1, hidden], "bias": [1]}, "colbert": {...}} as float32 numpy arrays, read
    with torch's weights-only loader (no pickled code runs)."""
    import torch

    heads = {}
    for head, path in head_files(folder).items():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for a bad file
            raise ExportError(f"{path} is not a weights-only PyTorch state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); fetch the file again from the model's hub page") from None
        if not isinstance(state, dict) or set(state) != {"weight", "bias"}:
            raise ExportError(f"{path} should hold a linear layer's 'weight' and 'bias', found "
                              f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        heads[head] = {key: state[key].detach().float().numpy() for key in ("weight", "bias")}
    return heads


def check_head_shapes(heads: dict, hidden: int) -> int:
    """The ColBERT width, once both heads read `hidden`-wide states (sparse: one output)."""
    sparse, colbert = heads["sparse"]["weight"], heads["colbert"]["weight"]
    if sparse.shape != (1, hidden) or heads["sparse"]["bias"].shape != (1,):
        raise ExportError(f"{HEAD_FILES['sparse']} is a {sparse.shape} layer; bge-m3's maps the {hidden}-wide "
                          "state to one weight per token")
    if colbert.ndim != 2 or colbert.shape[1] != hidden or heads["colbert"]["bias"].shape != (colbert.shape[0],):
        raise ExportError(f"{HEAD_FILES['colbert']} is a {colbert.shape} layer; it must read the {hidden}-wide state")
    return int(colbert.shape[0])


def add_heads(plain_file: Path, out_file: Path, *, source_folder: Path, hidden: int) -> int:
    """Append the dense (first token's state), sparse and ColBERT heads to the exporter's graph and make
    them its only outputs (the token states stay inside). Returns the ColBERT width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bgeort.manifest import POOLED_OUTPUT

    heads = read_heads(source_folder)
    colbert_dim = check_head_shapes(heads, hidden)
    model = onnx.load(str(plain_file))
    graph = model.graph
    states = next((o for o in graph.output if o.name == HIDDEN_OUTPUT), None)
    if states is None:
        raise ExportError(f"{Path(plain_file).name} has no {HIDDEN_OUTPUT!r} output to put bge-m3's heads on")
    batch, sequence = (d.dim_param or "batch" for d in states.type.tensor_type.shape.dim[:2])
    opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    p = "bgeort_m3/"
    constants = {
        "first": np.array(0, dtype=np.int64),
        "sparse_weight": heads["sparse"]["weight"].T.copy(),  # [hidden, 1]
        "sparse_bias": heads["sparse"]["bias"],
        "colbert_weight": heads["colbert"]["weight"].T.copy(),  # [hidden, colbert_dim]
        "colbert_bias": heads["colbert"]["bias"],
        "one": np.array([1], dtype=np.int64),
        "end": np.array([np.iinfo(np.int64).max], dtype=np.int64),
        "last_axis": np.array([2], dtype=np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, p + name) for name, value in constants.items())
    squeeze = (helper.make_node("Squeeze", [p + "sparse_relu", p + "last_axis"], [SPARSE_OUTPUT], name=p + "squeeze")
               if opset >= 13 else
               helper.make_node("Squeeze", [p + "sparse_relu"], [SPARSE_OUTPUT], axes=[2], name=p + "squeeze"))
    graph.node.extend([
        helper.make_node("Gather", [HIDDEN_OUTPUT, p + "first"], [POOLED_OUTPUT], axis=1, name=p + "dense"),
        helper.make_node("MatMul", [HIDDEN_OUTPUT, p + "sparse_weight"], [p + "sparse_mm"], name=p + "sparse/MatMul"),
        helper.make_node("Add", [p + "sparse_mm", p + "sparse_bias"], [p + "sparse_linear"], name=p + "sparse/Add"),
        helper.make_node("Relu", [p + "sparse_linear"], [p + "sparse_relu"], name=p + "sparse/Relu"),
        squeeze,
        helper.make_node("Slice", [HIDDEN_OUTPUT, p + "one", p + "end", p + "one"], [p + "tokens"],
                         name=p + "colbert/Slice"),
        helper.make_node("MatMul", [p + "tokens", p + "colbert_weight"], [p + "colbert_mm"], name=p + "colbert/MatMul"),
        helper.make_node("Add", [p + "colbert_mm", p + "colbert_bias"], [COLBERT_OUTPUT], name=p + "colbert/Add"),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, [batch, hidden]),
        helper.make_tensor_value_info(SPARSE_OUTPUT, TensorProto.FLOAT, [batch, sequence]),
        helper.make_tensor_value_info(COLBERT_OUTPUT, TensorProto.FLOAT, [batch, "tokens_after_first", colbert_dim]),
    ])
    graphfile.save_graph(model, Path(out_file))
    return colbert_dim


def unused_token_ids(model_folder: Path, *, trust_remote_code: bool = False) -> list[int]:
    """The ids FlagEmbedding leaves out of the lexical weights: the tokenizer's CLS, EOS, PAD and UNK."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder), trust_remote_code=trust_remote_code)
    ids = {tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
           for name in UNUSED_TOKENS if name in tokenizer.special_tokens_map}
    return sorted(int(i) for i in ids if i is not None)


@dataclass(frozen=True)
class Reference:
    dense: np.ndarray  # [N, hidden], normalized
    sparse: list  # per text {str(id): weight}
    colbert: list  # per text [n - 1, colbert_dim], normalized
    description: str


def torch_reference(model_folder: Path, texts: list[str], *, max_length: int,
                    trust_remote_code: bool = False) -> Reference:
    """bge-m3's three outputs from transformers + the two heads in PyTorch fp32, one text at a time
    (no padding), by the formulas of FlagEmbedding's M3 inference code."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder), trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(str(model_folder), dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
    heads = {}
    for head, state in read_heads(model_folder).items():
        layer = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        layer.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
        heads[head] = layer.eval()
    unused = set(unused_token_ids(model_folder, trust_remote_code=trust_remote_code))
    dense, sparse, colbert = [], [], []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer([text], padding=False, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            dense.append(torch.nn.functional.normalize(hidden[:, 0], dim=-1)[0].numpy())
            weights = torch.relu(heads["sparse"](hidden))[0, :, 0].numpy()
            lexical = {}
            for token_id, weight in zip(batch["input_ids"][0].tolist(), weights.tolist()):
                if token_id not in unused and weight > 0 and weight > lexical.get(str(token_id), 0.0):
                    lexical[str(token_id)] = weight
            sparse.append(lexical)
            vectors = heads["colbert"](hidden[:, 1:]) * batch["attention_mask"][:, 1:, None].float()
            colbert.append(torch.nn.functional.normalize(vectors, dim=-1)[0].numpy())
    return Reference(np.stack(dense).astype(np.float32), sparse, colbert,
                     f"PyTorch {torch.__version__} fp32, transformers {transformers.__version__} + bge-m3 heads")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def _top(weights: dict, k: int = 10) -> set:
    return set(sorted(weights, key=lambda key: -weights[key])[:k])


def compare(output: dict, reference: Reference) -> dict[str, float]:
    """Every output against the reference: dense and ColBERT by value and cosine, the lexical weights
    by value, id set and agreement of their ten heaviest ids."""
    dense_cos = _cosines(output["dense_vecs"], reference.dense)
    colbert_cos, colbert_diff, lengths_equal = [], 0.0, True
    for ours, theirs in zip(output["colbert_vecs"], reference.colbert):
        if ours.shape != theirs.shape:
            lengths_equal = False
            continue
        if len(ours):
            colbert_cos.extend(_cosines(ours, theirs).tolist())
            colbert_diff = max(colbert_diff, float(np.abs(ours.astype(np.float64) - theirs).max()))
    sparse_diff, sets_equal, agreement = 0.0, True, []
    for ours, theirs in zip(output["lexical_weights"], reference.sparse):
        for key in set(ours) | set(theirs):
            sparse_diff = max(sparse_diff, abs(ours.get(key, 0.0) - theirs.get(key, 0.0)))
            if (key in ours) != (key in theirs) and max(ours.get(key, 0.0), theirs.get(key, 0.0)) > SPARSE_ZERO:
                sets_equal = False
        top_ours, top_theirs = _top(ours), _top(theirs)
        if top_theirs:
            agreement.append(len(top_ours & top_theirs) / len(top_theirs))
    return {
        "dense_max_abs_diff": float(np.abs(output["dense_vecs"].astype(np.float64) - reference.dense).max()),
        "dense_min_cosine": float(dense_cos.min()),
        "dense_mean_cosine": float(dense_cos.mean()),
        "colbert_max_abs_diff": colbert_diff if lengths_equal else float("inf"),
        "colbert_min_cosine": float(min(colbert_cos)) if lengths_equal and colbert_cos else 0.0,
        "colbert_mean_cosine": float(np.mean(colbert_cos)) if lengths_equal and colbert_cos else 0.0,
        "colbert_lengths_equal": float(lengths_equal),
        "sparse_max_abs_diff": sparse_diff,
        "sparse_id_sets_equal": float(sets_equal),
        "sparse_top10_agreement": float(np.mean(agreement)) if agreement else 1.0,
    }


def judge(precision: str, numbers: dict[str, float]) -> list[str]:
    failures = [] if numbers["colbert_lengths_equal"] == 1.0 else ["ColBERT vector counts differ from the reference"]
    for key, bound in THRESHOLDS[precision].items():
        value = numbers[key]
        ok = value <= bound if key.endswith("max_abs_diff") else value >= bound
        if not ok:
            failures.append(f"{key} {value:.6g} (bound {'<=' if key.endswith('max_abs_diff') else '>='} {bound})")
    return failures


def check_variant(folder: Path, precision: str, texts: list[str], reference: Reference) -> dict:
    """Run `precision` of the staged folder through bgeort.M3Embedder in length-sorted batches of 4
    and in one padded batch of every probe; the worse of the two runs is recorded."""
    import warnings

    from bgeort import M3Embedder
    from bgeort.errors import TruncationWarning

    model = M3Embedder(folder, precision=precision, device="cpu")
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # the probes pass the max length on purpose
        for batch_size in (4, len(texts)):
            output = model.encode(texts, batch_size=batch_size, return_dense=True, return_sparse=True,
                                  return_colbert_vecs=True)
            runs.append(compare(output, reference))
    numbers = {key: (max if key.endswith("max_abs_diff") else min)(run[key] for run in runs) for key in runs[0]}
    failures = judge(precision, numbers)
    return {**numbers, "passed": not failures, "failures": failures, "thresholds": THRESHOLDS[precision],
            "probes": len(texts), "reference": reference.description, "checked_on": "cpu"}
