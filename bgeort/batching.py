"""Planning batches from token lengths: a pure function, so it is tested without a model.

On CPU, padding is the main waste: texts are sorted by length so that each batch is padded only to
its own longest text, and a token budget keeps batches of long texts small.
"""

from __future__ import annotations

import numpy as np


def plan_batches(lengths, *, batch_size: int, max_tokens: int | None = None,
                 max_attention: int | None = None) -> list[np.ndarray]:
    """Split indices of `lengths` into batches of similar length.

    Returns index arrays covering every index exactly once. Texts are taken longest first; a batch
    holds at most `batch_size` texts and, when `max_tokens` is given, at most `max_tokens` padded
    tokens (rows times the batch's longest length; a single text longer than the budget still gets
    a batch of its own). A batch also ends where the next text is shorter than its longest by more
    than a quarter (and 8 tokens): on a long-tailed corpus, sorting alone still pads the
    first batches of each length band several times over. `max_attention` bounds rows times the
    longest length squared: the attention scores of one layer grow with S^2, not S (8,192-token
    inputs: attention_budget).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
    if max_attention is not None and max_attention < 1:
        raise ValueError(f"max_attention must be at least 1 or None, got {max_attention}")
    lengths = np.asarray(lengths, dtype=np.int64)
    # Stable sort, longest first: equal lengths keep their input order.
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    batches = []
    start = 0
    total = len(order)
    while start < total:
        longest = int(ordered[start])
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, max_tokens // max(longest, 1)))
        if max_attention is not None:
            size = max(1, min(size, max_attention // max(longest * longest, 1)))
        end = min(start + size, total)
        floor = longest - max(longest // 4, 8)
        # first position in [start, end) whose length falls below the floor (lengths descend)
        cut = start + int(np.searchsorted(-ordered[start:end], -floor, side="right"))
        end = max(cut, start + 1)
        batches.append(order[start:end])
        start = end
    return batches


# Defaults per device: (texts per batch, padded tokens per batch). On CPU small batches win (the
# attention scores stay in cache); a GPU wants large ones (docs/design.md, "Batch defaults").
DEVICE_DEFAULTS = {"cpu": (32, 128), "cuda": (1024, 65536)}


def batch_defaults(device: str) -> tuple[int, int | None]:
    """The default batch size and token budget for 'cpu' or 'cuda:N'."""
    return DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]


# Rows x S^2 per batch: 2^27 is two 8,192-token inputs or 32 of 2,048 tokens (16 heads' fp16 scores of
# one layer: 4 GiB at the bound). On CPU the token budget keeps batches far smaller already.
ATTENTION_CELLS = {"cpu": None, "cuda": 2**27}


def attention_budget(device: str) -> int | None:
    """The rows x longest^2 bound of a batch on 'cpu' or 'cuda:N' (None: no bound beyond the tokens')."""
    return ATTENTION_CELLS["cuda" if device.startswith("cuda") else "cpu"]
