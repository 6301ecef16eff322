"""What `bgeort embed` and `bgeort rerank` over files share: reading several inputs as one stream of
records, turning records into (id, values) or rejections, the progress bar and the last line."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time

from .. import __version__
from ..errors import BgeortError, MissingDependencyError
from . import formats


class RowError(BgeortError):
    """A row cannot be used (and --on-error is 'stop')."""


def positive_int(value: str) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_input_arguments(parser) -> None:
    parser.add_argument("-o", "--output", help="output file: .parquet, .npy (+ .ids.jsonl beside it) or .jsonl")
    parser.add_argument("--input-format", choices=sorted(formats.READERS),
                        help="the inputs' format when their extension does not say it (stdin '-' is txt)")
    parser.add_argument("--id-field", help="the field that holds each row's id (default: the row number from 0 "
                                           "across all inputs)")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="a bad row stops the job (default), or is written to <output>.rejected.jsonl")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output or another job's partial")
    parser.add_argument("--chunk-rows", type=positive_int, default=4096,
                        help="input rows per durable write (and per encode call)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--batch-tokens", type=positive_int, help="padded tokens per batch (the model's default if unset)")
    parser.add_argument("--max-length", type=positive_int, help="truncate texts at this many tokens (the model's limit)")


def describe_inputs(paths: list[str], given_format: str | None) -> list[dict]:
    """Each input's format and what identifies its content (size and modification time) for the job's
    fingerprint; stdin cannot be identified, so a job from it resumes on trust."""
    described = []
    for path in paths:
        fmt, gzipped = formats.format_of(path, given_format)
        if path == "-":
            described.append({"path": "-", "format": fmt, "gzip": gzipped})
            continue
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise formats.InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
        described.append({"path": os.path.abspath(path), "format": fmt, "gzip": gzipped, "bytes": stat.st_size,
                          "mtime_ns": stat.st_mtime_ns})
    return described


def model_fingerprint(model) -> dict:
    manifest = model.path / "bgeort.json"
    return {"folder": str(model.path.resolve()), "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "precision": model.precision, "device": model.device.split(":")[0], "bgeort": __version__}


def records(inputs: list[dict], paths: list[str], *, text_field: str):
    """Every input's records, one stream, in order."""
    for path, described in zip(paths, inputs):
        reader = formats.READERS[described["format"]]
        yield from reader(path, described["gzip"], text_field=text_field)


def total_rows(inputs: list[dict], paths: list[str]) -> int | None:
    counts = [formats.count_rows(path, d["format"], d["gzip"]) for path, d in zip(paths, inputs)]
    return None if any(count is None for count in counts) else sum(counts)


def field_text(record: formats.Record, field: str) -> str:
    """The record's `field` as a str, or a RowError naming the row and the problem."""
    if record.problem:
        raise RowError(f"{record.where}: {record.problem}")
    if field not in record.fields:
        raise RowError(f"{record.where}: no field {field!r} (the row has {sorted(record.fields)}); "
                       f"name the text's field with --text-field")
    value = record.fields[field]
    if not isinstance(value, str):
        shown = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise RowError(f"{record.where}: field {field!r} is {shown}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{record.where}: field {field!r} is not valid UTF-8") from None
    return value


def row_id(record: formats.Record, field: str | None, number: int):
    if field is None:
        return number
    if field not in record.fields:
        raise RowError(f"{record.where}: no id field {field!r} (the row has {sorted(record.fields)})")
    value = record.fields[field]
    if value is None or isinstance(value, (dict, list)):
        raise RowError(f"{record.where}: id field {field!r} is {json.dumps(value)[:40]}, not a scalar id")
    return str(value)


def reject(exc: RowError, record, number: int, *, on_error: str, rejected: list) -> None:
    """A bad row: stop with it (the default: nothing after it is written), or set it aside with its reason."""
    if on_error == "stop":
        raise RowError(f"{exc}. The rows before its chunk are saved; fix the row, or pass "
                       "--on-error skip to set such rows aside, and run again") from None
    rejected.append({"row": number, "where": record.where, "reason": str(exc), "fields": record.fields})


def add_totals(totals: dict, *, count: int, lengths, truncated, rejected: list, seconds: float) -> dict:
    """The job's running totals after one chunk (saved with each part, so a resumed job counts on)."""
    return {"texts": totals["texts"] + count, "tokens": totals["tokens"] + int(lengths.sum()),
            "truncated": totals["truncated"] + int(truncated.sum()), "rejected": totals["rejected"] + len(rejected),
            "seconds": totals["seconds"] + seconds}


def chunks(stream, size: int):
    while chunk := list(itertools.islice(stream, size)):
        yield chunk


class Progress:
    """tqdm on stderr (texts, texts/s, tokens/s in the postfix, ETA when the total is known)."""

    def __init__(self, *, total: int | None, initial: int, quiet: bool, unit: str = "texts"):
        self.bar, self.tokens, self.started = None, 0, time.perf_counter()
        if quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            raise MissingDependencyError(f"the progress bar needs tqdm: pip install 'bgeort[{formats.EXTRA}]' "
                                         "(or pass --quiet)") from None
        self.bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def update(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(rows)
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tokens/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
