"""Parity of every exported variant with the PyTorch reference, on a fixed probe set.

The reference is transformers' own tokenizer and model in float32 with the model's pooling and
normalization: nothing of bgeort's. The candidate is `bgeort.Embedder` on the staged folder, so the
check covers our tokenization, batching, padding and pooling as well as the ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Per precision: the bound each measured number must meet (issue #2).
THRESHOLDS = {
    "fp32": {"max_abs_diff": 1e-4, "min_cosine": 0.99999},
    "fp32-unfused": {"max_abs_diff": 1e-4, "min_cosine": 0.99999},
    "int8": {"mean_cosine": 0.99},
    "fp16": {"min_cosine": 0.999},
}

_SHORT = [
    "",
    "Hello!",
    "what is a panda?",
    "The giant panda is a bear species endemic to China.",
    "A man is playing a guitar on the street, and a small crowd has gathered to listen.",
    "Ünïcödé, emoji 🙂 and CJK 北京欢迎你 in one line",
    "  leading and trailing spaces  ",
    "Représentation de la phrase pour la recherche de passages pertinents.",
]
_PARAGRAPH = (
    "Retrieval-augmented generation splits documents into chunks of a few hundred tokens, embeds each "
    "chunk once, and at query time embeds the question and looks up its nearest chunks by cosine "
    "similarity. The quality of the answer depends on the embedding model seeing the whole chunk. "
)


def probe_texts(max_length: int) -> list[str]:
    """Short texts, a few hundred tokens, and texts reaching and passing the max length."""
    words = _PARAGRAPH.split()
    def of_words(n: int) -> str:
        return " ".join(words[i % len(words)] for i in range(n))
    return _SHORT + [_PARAGRAPH, of_words(max_length // 2), of_words(max_length - 2), of_words(max_length * 2)]


@dataclass(frozen=True)
class Reference:
    vectors: np.ndarray
    description: str


def torch_reference(model_folder: Path, texts: list[str], *, pooling: str, normalize: bool,
                    max_length: int) -> Reference:
    """Vectors from transformers + PyTorch fp32, one text at a time (no padding at all)."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder))
    model = AutoModel.from_pretrained(str(model_folder), dtype=torch.float32).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer([text], padding=False, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            if pooling == "cls":
                vector = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vector = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                vector = torch.nn.functional.normalize(vector, p=2, dim=1)
            rows.append(vector[0].numpy())
    return Reference(np.stack(rows).astype(np.float32),
                     f"PyTorch {torch.__version__} fp32, transformers {transformers.__version__}")


def compare(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a = candidate.astype(np.float64)
    b = reference.astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def judge(precision: str, numbers: dict[str, float]) -> list[str]:
    """Failures, in words; empty when every bound of the precision is met."""
    failures = []
    for key, bound in THRESHOLDS[precision].items():
        value = numbers[key]
        ok = value <= bound if key == "max_abs_diff" else value >= bound
        if not ok:
            failures.append(f"{key} {value:.6g} (bound {'<=' if key == 'max_abs_diff' else '>='} {bound})")
    return failures


def check_variant(folder: Path, precision: str, texts: list[str], reference: Reference) -> dict:
    """Run `precision` of the staged folder through bgeort, twice: length-sorted batches, and all
    probes in one batch padded to the longest (a text's vector must not depend on its neighbours).
    The worse of the two is recorded."""
    import warnings

    from bgeort import Embedder
    from bgeort.errors import TruncationWarning

    model = Embedder(folder, precision=precision, device="cpu")
    runs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # the probes pass the max length on purpose
        runs.append(compare(model.encode(texts, batch_size=4), reference.vectors))
        runs.append(compare(model.encode(texts, batch_size=len(texts)), reference.vectors))
    numbers = {
        "max_abs_diff": max(run["max_abs_diff"] for run in runs),
        "min_cosine": min(run["min_cosine"] for run in runs),
        "mean_cosine": min(run["mean_cosine"] for run in runs),
    }
    failures = judge(precision, numbers)
    return {
        **numbers,
        "passed": not failures,
        "failures": failures,
        "thresholds": THRESHOLDS[precision],
        "probes": len(texts),
        "reference": reference.description,
        "checked_on": "cpu",
    }
