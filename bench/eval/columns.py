"""What produces vectors for one column of the report: a bgeort precision, or the PyTorch reference.

Both strip texts (as sentence-transformers does before MTEB sees a vector), cache vectors by text
(a text's vector does not depend on its batch neighbours, so each unique text is encoded once per
column), and count the tokens they encode and the seconds they spend, for tokens/s.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

BATCH_SIZE = 32


class Column:
    """A named source of L2-normalized float32 vectors with its own throughput counters."""

    name = "column"

    def __init__(self):
        self.tokens = 0
        self.seconds = 0.0
        self.texts = 0
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        texts = [text.strip() for text in texts]
        missing = list(dict.fromkeys(text for text in texts if text not in self._cache))
        if missing:
            start = time.perf_counter()
            vectors, tokens = self._encode(missing)
            self.seconds += time.perf_counter() - start
            self.tokens += int(tokens)
            self.texts += len(missing)
            self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[text] for text in texts]) if texts else np.zeros((0, 0), np.float32)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def throughput(self) -> dict:
        return {"texts": self.texts, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None}


class BgeortColumn(Column):
    """One precision of an exported folder through `bgeort.Embedder` on CPU."""

    def __init__(self, path: str | Path, precision: str, *, batch_size: int = BATCH_SIZE):
        super().__init__()
        from bgeort import Embedder

        # spinning=False: the eval shares its cores with other work; spinning threads would steal from it.
        self.embedder = Embedder(path, precision=precision, device="cpu", batch_size=batch_size, spinning=False)
        self.name = precision

    def _encode(self, texts):
        from bgeort import TruncationWarning

        lengths = np.minimum(self.embedder.token_counts(texts), self.embedder.max_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)  # counted per task by `truncated_count`
            return self.embedder.encode(texts), lengths.sum()


class TorchColumn(Column):
    """transformers + PyTorch fp32 from the export's source folder, with the manifest's pooling,
    normalization and max length: batches of length-sorted texts, padded to their longest."""

    name = "reference"

    def __init__(self, source: str, *, pooling: str, normalize: bool, max_length: int,
                 batch_size: int = BATCH_SIZE):
        super().__init__()
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        local = not Path(source).is_dir()  # a hub id: only from the local cache, never downloaded
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        self.model = AutoModel.from_pretrained(source, dtype=torch.float32, local_files_only=local).eval()
        self.pooling, self.normalize, self.max_length, self.batch_size = pooling, normalize, max_length, batch_size
        self.description = (f"transformers {transformers.__version__} + PyTorch {torch.__version__} fp32 "
                            f"from {source}, {pooling} pooling, max_length {max_length}, "
                            f"{torch.get_num_threads()} threads")

    def _encode(self, texts):
        import torch

        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    vectors = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                out[rows] = vectors.numpy()
        return out, sum(lengths)


def reference_column(manifest, *, source: str | None = None) -> tuple[TorchColumn | None, str]:
    """The PyTorch column for `manifest`'s provenance source, or None and the reason it is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return None, f"no PyTorch reference: {exc.name} is not installed (pip install -e '.[export]')"
    source = source or manifest.provenance.get("source")
    if not source:
        return None, "no PyTorch reference: the manifest records no provenance source"
    try:
        column = TorchColumn(source, pooling=manifest.pooling, normalize=manifest.normalize,
                             max_length=manifest.max_length)
    except OSError as exc:
        return None, f"no PyTorch reference: cannot load {source} ({str(exc).splitlines()[0][:160]})"
    return column, column.description
