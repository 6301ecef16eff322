"""Tokenization with the Rust `tokenizers` library: the one module that imports it.

The folder's `tokenizer.json` may carry padding and truncation settings from its source (a fixed
padding to 128, say). Those are always cleared here: bgeort truncates at the manifest's max length
and pads each batch to its own longest text.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .errors import ModelFolderError


@dataclass(frozen=True)
class Encoded:
    """Token ids of a list of texts (or text pairs), unpadded, with what truncation did.

    The ids of every input lie end to end in one array (input i at starts[i] : starts[i] + lengths[i]),
    so a batch is padded with a few numpy gathers instead of a Python loop over its rows."""

    flat_ids: np.ndarray  # int64
    flat_type_ids: np.ndarray  # int64
    starts: np.ndarray  # int64, where each input's ids begin
    lengths: np.ndarray  # tokens per input after truncation, special tokens included
    truncated: np.ndarray  # bool per input: was the input cut to fit?

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def ids(self) -> list[list[int]]:
        return [self.flat_ids[s:s + n].tolist() for s, n in zip(self.starts, self.lengths)]

    @property
    def type_ids(self) -> list[list[int]]:
        return [self.flat_type_ids[s:s + n].tolist() for s, n in zip(self.starts, self.lengths)]


# A text longer than this many characters per token of the limit is tokenized from a prefix cut
# before a whitespace run: exact for tokenizers that split at whitespace first (docs/design.md, "Prefixes").
PREFIX_CHARS_PER_TOKEN = 8
_WHITESPACE_SPLITTING = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace"}


def _splits_at_whitespace(config: dict) -> bool:
    """Whether this tokenizer.json cuts text into words at whitespace first (see PREFIX_CHARS_PER_TOKEN)."""
    pre = config.get("pre_tokenizer") or {}
    return pre.get("type") in _WHITESPACE_SPLITTING and pre.get("split", True) is not False


def _prefix(text: str, limit: int) -> str | None:
    """text cut before the last whitespace run within its first `limit` characters (None: no such run
    in the second half of them)."""
    head = text[:limit]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return head[:cut].rstrip() if cut >= limit // 2 else None


class TextTokenizer:
    """Encodes texts with truncation at a chosen length and no padding; pads batches on request."""

    def __init__(self, path: str | os.PathLike, *, max_length: int, pad_id: int | None = None):
        try:
            with open(path, encoding="utf-8") as stream:
                self._json = stream.read()
            self._untruncated = self._make(None)
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ModelFolderError(f"{path} is not a tokenizer file the tokenizers library can read "
                                   f"({type(exc).__name__}: {exc})") from None
        self.max_length = max_length
        self._lock = threading.Lock()
        self._by_length: dict[tuple, Tokenizer] = {}
        self.pad_id = self._find_pad_id() if pad_id is None else pad_id
        self._prefixes = _splits_at_whitespace(json.loads(self._json))

    def _make(self, max_length: int | None, strategy: str = "longest_first", stride: int = 0) -> Tokenizer:
        tokenizer = Tokenizer.from_str(self._json)
        tokenizer.no_padding()
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy, direction="right")
        return tokenizer

    def _for_length(self, max_length: int, strategy: str = "longest_first", stride: int = 0) -> Tokenizer:
        # One tokenizer per setting instead of re-setting one: encode may run from several threads.
        key = (max_length, strategy, stride)
        tokenizer = self._by_length.get(key)
        if tokenizer is None:
            with self._lock:
                tokenizer = self._by_length.setdefault(key, self._make(max_length, strategy, stride))
        return tokenizer

    def _find_pad_id(self) -> int:
        padding = self._make(None)
        for token in ("[PAD]", "<pad>"):
            token_id = padding.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def encode(self, inputs: list, *, max_length: int | None = None) -> Encoded:
        """Encode texts, or (text, text) tuples for pair models, truncating at max_length."""
        length = self.max_length if max_length is None else max_length
        encodings = self._encode_batch(self._for_length(length), inputs, tokens=length, add_special_tokens=True)
        return _collect(encodings, [bool(e.overflowing) for e in encodings])

    def _encode_batch(self, tokenizer: Tokenizer, inputs: list, *, tokens: int, add_special_tokens: bool,
                      what: str = "texts[{}]") -> list:
        """tokenizer.encode_batch(inputs), reading a text past PREFIX_CHARS_PER_TOKEN * `tokens` characters
        from a prefix when that prefix alone gives more than `tokens` tokens (the rest cannot change them)."""
        limit = PREFIX_CHARS_PER_TOKEN * tokens
        cuts = {}
        if self._prefixes and inputs and isinstance(inputs[0], str) and max(map(len, inputs)) > limit:
            cuts = {i: prefix for i, text in enumerate(inputs) if len(text) > limit
                    and (prefix := _prefix(text, limit)) is not None}
        shortened = list(inputs)
        for i, prefix in cuts.items():
            shortened[i] = prefix
        encodings = _encode_checked(tokenizer, shortened, add_special_tokens, what)
        # the prefix fit: the whole text decides
        fitted = [i for i in cuts if not encodings[i].overflowing and len(encodings[i].ids) <= tokens]
        if fitted:
            redone = _encode_checked(tokenizer, [inputs[i] for i in fitted], add_special_tokens, what)
            for i, encoding in zip(fitted, redone):
                encodings[i] = encoding
        return encodings

    def encode_pairs(self, queries: list[str], passages: list[str], *, max_length: int | None = None,
                     windows: bool = False) -> tuple[Encoded, np.ndarray]:
        """Encode (query, passage) pairs as FlagEmbedding's FlagReranker does: the query keeps at
        most 3/4 of max_length tokens, the passage is cut to fit the rest, special tokens and
        segment ids come from the tokenizer's pair template.

        With `windows=True` a passage that does not fit is instead split into overlapping windows
        (half a window of overlap), one row each. Returns the rows and, per row, the pair it scores.
        """
        length = self.max_length if max_length is None else max_length
        specials = self._untruncated.num_special_tokens_to_add(is_pair=True)
        query_encodings = self._encode_batch(self._for_length(length * 3 // 4), queries, tokens=length * 3 // 4,
                                             add_special_tokens=False, what="pairs[{}][0]")
        if windows:  # every window is scored: the whole passage is read
            passage_encodings = _encode_checked(self._untruncated, passages, False, "pairs[{}][1]")
        else:  # only its first `room` tokens are (room < length)
            passage_encodings = self._encode_batch(self._untruncated, passages, tokens=length,
                                                   add_special_tokens=False, what="pairs[{}][1]")
        pair_tokenizer = self._for_length(length, "only_second")
        rows, truncated, owners = [], [], []
        for index, (query, passage) in enumerate(zip(query_encodings, passage_encodings)):
            room = length - specials - len(query.ids)
            if windows and len(passage.ids) > room > 0:
                stride = room // 2
                tokenizer = self._for_length(room, "longest_first", stride)
                first = tokenizer.encode(passages[index], add_special_tokens=False)
                for window in [first, *first.overflowing]:
                    rows.append(pair_tokenizer.post_process(query, window))
                    truncated.append(bool(query.overflowing))
                    owners.append(index)
                continue
            rows.append(pair_tokenizer.post_process(query, passage))
            truncated.append(bool(query.overflowing) or len(passage.ids) > max(room, 0))
            owners.append(index)
        return _collect(rows, truncated), np.asarray(owners, dtype=np.int64)

    def decode_id(self, token_id: int) -> str:
        """The text of one token id, as the tokenizer decodes it alone."""
        return self._untruncated.decode([token_id])

    def count_tokens(self, inputs: list) -> np.ndarray:
        """Tokens per input with no truncation at all, special tokens included."""
        encodings = _encode_checked(self._untruncated, inputs, True, "texts[{}]")
        return np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def pad(self, encoded: Encoded, indices: np.ndarray) -> dict[str, np.ndarray]:
        """int64 arrays for the rows `indices`, padded to the longest of them."""
        lengths = encoded.lengths[indices]
        width = int(lengths.max()) if len(indices) else 0
        columns = np.arange(width)
        mask = columns < lengths[:, None]
        positions = encoded.starts[indices][:, None] + columns
        np.minimum(positions, max(len(encoded.flat_ids) - 1, 0), out=positions)  # the padding reads a valid index
        return {"input_ids": np.where(mask, encoded.flat_ids[positions], self.pad_id),
                "attention_mask": mask.astype(np.int64),
                "token_type_ids": np.where(mask, encoded.flat_type_ids[positions], 0)}


def _encode_checked(tokenizer: Tokenizer, inputs: list, add_special_tokens: bool, what: str) -> list:
    """encode_batch, with a ValueError naming the input that is not valid Unicode (a lone surrogate,
    e.g. from bytes decoded with errors='surrogateescape'), where the tokenizer raises a bare TypeError."""
    try:
        return tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
    except TypeError:
        for index, text in enumerate(inputs):
            for part in (text,) if isinstance(text, str) else text:
                try:
                    part.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ValueError(
                        f"{what.format(index)} is not valid Unicode: character {exc.start} is a lone surrogate "
                        f"({part[exc.start]!r}), which no tokenizer can read. Clean it first, e.g. "
                        "text.encode('utf-8', 'replace').decode('utf-8')") from None
        raise


def _collect(encodings, truncated: list[bool]) -> Encoded:
    lengths = np.fromiter((len(encoding) for encoding in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return Encoded(
        flat_ids=np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total),
        flat_type_ids=np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64,
                                  count=total),
        starts=starts,
        lengths=lengths,
        truncated=np.asarray(truncated, dtype=bool).reshape(len(lengths)),
    )
