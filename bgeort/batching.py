"""Planning batches from token lengths: a pure function, so it is tested without a model.

On CPU, padding is the main waste: texts are sorted by length so that each batch is padded only to
its own longest text, and a token budget keeps batches of long texts small.
"""

from __future__ import annotations

import numpy as np


def plan_batches(lengths, *, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Split indices of `lengths` into batches of similar length.

    Returns index arrays covering every index exactly once. Texts are taken longest first; a batch
    holds at most `batch_size` texts and, when `max_tokens` is given, at most `max_tokens` padded
    tokens (rows times the batch's longest length; a single text longer than the budget still gets
    a batch of its own). A batch also ends where the next text is shorter than its longest by more
    than a quarter (and 8 tokens): on a long-tailed corpus, sorting alone still pads the
    first batches of each length band several times over.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
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
        end = min(start + size, total)
        floor = longest - max(longest // 4, 8)
        # first position in [start, end) whose length falls below the floor (lengths descend)
        cut = start + int(np.searchsorted(-ordered[start:end], -floor, side="right"))
        end = max(cut, start + 1)
        batches.append(order[start:end])
        start = end
    return batches


# Defaults per device: (texts per batch, padded tokens per batch). A GPU wants large batches to
# fill its cores. On CPU small batches win: the attention scores of a batch (batch x heads x length^2
# floats) stay in cache, and at 2+ threads each batch fits the side-by-side sessions (model.py).
# bge-small shape int8, budget 128 against 2048 (interleaved, this Xeon): SciFact chunks (~330
# tokens, so one per batch) +53% at 1 thread, +75% at 2; the long-tailed mix +68% at 2; STS-B
# sentences (~13 tokens, ~9 a batch) +23% at 1 and +3..21% at 2; fp32 chunks +33% at 2. (1024 and
# 2048 were within 10% of each other; 2048 had beaten 32 texts with no budget by 1.3x on chunks.)
# The budget also caps the attention buffers, so peak memory stays low. On CUDA (bge-small shape fp16,
# H200, bench/gpu.py, 7 interleaved rounds): 1,024 texts a batch against 256, STS-B sentences +19%;
# SciFact chunks and 512-token texts equal (the 65,536-token budget already makes their batches).
DEVICE_DEFAULTS = {"cpu": (32, 128), "cuda": (1024, 65536)}


def batch_defaults(device: str) -> tuple[int, int | None]:
    """The default batch size and token budget for 'cpu' or 'cuda:N'."""
    return DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
