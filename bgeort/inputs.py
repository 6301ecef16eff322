"""Checks on what callers pass, shared by `Embedder` and `Reranker`."""

from __future__ import annotations

import itertools
import warnings

import numpy as np

from .errors import TruncationWarning


def check_texts(texts, name: str = "texts") -> list[str]:
    """A list of str from a list/tuple/iterable (a generator, a numpy array, a pandas Series), or a
    TypeError naming the first bad item. A bare str is refused: iterating it would give its characters."""
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of str, got a single str ({texts!r:.40}); wrap it in a list")
    if texts is None or isinstance(texts, (bytes, bytearray, dict)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a str or a list of str, got {type(texts).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"{name}[{index}] is {type(item).__name__} ({item!r:.60}), not str; "
                "every input must be a string (use '' for an empty text)"
            )
    return items


# Texts encode_iter holds at a time: enough for sorting by length to fill batches as well as one big
# call does (plan_batches), small enough to hold (4,096 SciFact chunks: ~6 MB of text, ~17 MB of ids).
READ_AHEAD = 4096


def read_windows(items, window: int):
    """Lists of at most `window` items from any iterable, in order; a TypeError names a non-str item
    by its position in the whole stream."""
    if items is None or isinstance(items, (str, bytes, bytearray, dict)):
        raise TypeError(f"texts must be an iterable of str, got {type(items).__name__}")
    try:
        iterator = iter(items)
    except TypeError:
        raise TypeError(f"texts must be an iterable of str, got {type(items).__name__}") from None
    start = 0
    while True:
        chunk = list(itertools.islice(iterator, window))
        if not chunk:
            return
        for offset, item in enumerate(chunk):
            if not isinstance(item, str):
                raise TypeError(f"texts[{start + offset}] is {type(item).__name__} ({item!r:.60}), not str; "
                                "every input must be a string (use '' for an empty text)")
        yield chunk
        start += len(chunk)


def warn_truncated(truncated: np.ndarray, max_length: int, *, start: int = 0) -> None:
    where = np.flatnonzero(truncated) + start
    shown = ", ".join(str(i) for i in where[:10]) + (", ..." if len(where) > 10 else "")
    warnings.warn(
        TruncationWarning(
            f"{len(where)} of {len(truncated)} inputs were longer than max_length={max_length} tokens "
            f"and were truncated to it (indices {shown}); token_counts(texts) gives the full lengths"
        ),
        stacklevel=4,
    )


def positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
