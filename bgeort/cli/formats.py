"""File formats of the corpus jobs (`bgeort embed`/`bgeort rerank` over files), as tables keyed by
extension: READERS turn an input into records (dicts of fields) one at a time, WRITERS write columns
incrementally. Text is decoded with surrogateescape, so a line that is not UTF-8 is rejected alone,
by its row, instead of failing the whole file. pyarrow is imported only for Parquet."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BgeortError, MissingDependencyError

EXTRA = "corpus"


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(f"Parquet files need pyarrow: pip install 'bgeort[{EXTRA}]'") from None
    return pyarrow


class InputError(BgeortError):
    """An input file cannot be read at all (missing, unknown format, bad header)."""


@dataclass
class Record:
    """One input row: `fields`, or `problem` when the row itself is malformed; `where` names it."""

    where: str
    fields: dict | None = None
    problem: str | None = None


def format_of(path: str, given: str | None) -> tuple[str, bool]:
    """(format, gzipped) from --input-format or the file's extension ('-' is stdin: text unless given)."""
    name = path.lower()
    gzipped = name.endswith(".gz")
    if given:
        return given, gzipped
    if path == "-":
        return "txt", False
    suffix = Path(name[:-3] if gzipped else name).suffix
    fmt = EXTENSIONS.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown input type {suffix or '(no extension)'!r}; name the file with one of "
                         f"{sorted(EXTENSIONS)} (optionally + .gz) or give --input-format {sorted(READERS)}")
    if gzipped and fmt == "parquet":
        raise InputError(f"{path}: a Parquet file compresses its own pages; give it uncompressed")
    return fmt, gzipped


def _text_stream(path: str, gzipped: bool, *, newline=None):
    try:
        raw = sys.stdin.buffer if path == "-" else (gzip.open(path, "rb") if gzipped else open(path, "rb"))
    except OSError as exc:
        raise InputError(f"cannot read input {path}: {exc.strerror or exc}") from None
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline=newline)


def read_txt(path: str, gzipped: bool, *, text_field: str):
    with _text_stream(path, gzipped) as stream:
        for number, line in enumerate(stream, 1):
            yield Record(f"{path}:{number}", {text_field: line.rstrip("\n")})


def read_jsonl(path: str, gzipped: bool, *, text_field: str):
    with _text_stream(path, gzipped) as stream:
        for number, line in enumerate(stream, 1):
            where = f"{path}:{number}"
            if not line.strip():
                yield Record(where, problem="an empty line, not a JSON object")
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Record(where, problem=f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if isinstance(value, dict):
                yield Record(where, value)
            else:
                yield Record(where, problem=f"a JSON {type(value).__name__}, not an object with fields")


def _read_delimited(path: str, gzipped: bool, delimiter: str):
    with _text_stream(path, gzipped, newline="") as stream:
        reader = csv.reader(stream, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:1: the header row is not valid CSV ({exc})") from None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(f"{path}:{reader.line_num}", problem=f"not a valid CSV row ({exc})")
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                yield Record(where, problem=f"{len(row)} fields where the header has {len(header)} ({header})")
            else:
                yield Record(where, dict(zip(header, row)))


def read_csv(path: str, gzipped: bool, *, text_field: str):
    return _read_delimited(path, gzipped, ",")


def read_tsv(path: str, gzipped: bool, *, text_field: str):
    return _read_delimited(path, gzipped, "\t")


def read_parquet(path: str, gzipped: bool, *, text_field: str):
    pyarrow = import_pyarrow()
    try:
        parquet = pyarrow.parquet.ParquetFile(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise InputError(f"cannot read Parquet input {path}: {exc}") from None
    row = 0
    for group in range(parquet.num_row_groups):  # one row group in memory at a time
        for fields in parquet.read_row_group(group).to_pylist():
            yield Record(f"{path} row {row}", fields)
            row += 1


READERS = {"txt": read_txt, "jsonl": read_jsonl, "csv": read_csv, "tsv": read_tsv, "parquet": read_parquet}
EXTENSIONS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet"}


def count_rows(path: str, fmt: str, gzipped: bool) -> int | None:
    """Rows in an input when that is cheap to know (for the progress bar's ETA): Parquet metadata, or a
    count of newlines in an uncompressed text file (a CSV field holding newlines makes it an estimate)."""
    if path == "-" or gzipped:
        return None
    try:
        if fmt == "parquet":
            return import_pyarrow().parquet.ParquetFile(path).metadata.num_rows
        lines, last = 0, b"\n"
        with open(path, "rb") as stream:
            while block := stream.read(1 << 22):
                lines += block.count(b"\n")
                last = block[-1:]
        lines += last != b"\n"
        return max(lines - (fmt in ("csv", "tsv")), 0)
    except (OSError, BgeortError):
        return None


# --- outputs: columns in, written a part at a time; one 2-D column (the vectors) at most ---

class JsonlWriter:
    def __init__(self, path: Path, *, matrix: str | None, width: int, dtype: np.dtype):
        self.stream = open(path, "w", encoding="utf-8")

    def write(self, columns: dict) -> None:
        names = list(columns)
        lists = [columns[name].tolist() if isinstance(columns[name], np.ndarray) else columns[name] for name in names]
        self.stream.writelines(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n" for row in zip(*lists))

    def close(self) -> None:
        _durable_close(self.stream)


class NpyWriter:
    """The 2-D column as one .npy (header first: the row count is known when parts are assembled);
    every other column in a sidecar `<name>.ids.jsonl`, one JSON object a row, in the same order."""

    def __init__(self, path: Path, *, matrix: str | None, width: int, dtype: np.dtype, rows: int):
        self.matrix, self.stream = matrix, open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, width)}
        np.lib.format.write_array_header_2_0(self.stream, header)
        self.sidecar = JsonlWriter(sidecar_path(path), matrix=None, width=0, dtype=dtype)

    def write(self, columns: dict) -> None:
        self.stream.write(np.ascontiguousarray(columns[self.matrix]).tobytes())
        self.sidecar.write({name: value for name, value in columns.items() if name != self.matrix})

    def close(self) -> None:
        _durable_close(self.stream)
        self.sidecar.close()


class ParquetWriter:
    """A row group per part; the vectors as a fixed-size list column of their stored type."""

    def __init__(self, path: Path, *, matrix: str | None, width: int, dtype: np.dtype):
        self.pyarrow, self.path, self.matrix, self.width, self.dtype = import_pyarrow(), path, matrix, width, dtype
        self.writer = None

    def _table(self, columns: dict):
        pa = self.pyarrow
        arrays, names = [], []
        for name, value in columns.items():
            if name == self.matrix:
                flat = pa.array(np.ascontiguousarray(value, dtype=self.dtype).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.width))
            elif isinstance(value, np.ndarray):
                arrays.append(pa.array(value))
            else:
                arrays.append(pa.array(value, type=_arrow_type(pa, value)))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def write(self, columns: dict) -> None:
        table = self._table(columns)
        if self.writer is None:
            self.writer = self.pyarrow.parquet.ParquetWriter(str(self.path), table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:  # an empty output still has the schema
            return
        self.writer.close()
        _fsync_path(self.path)

    def close_empty(self, columns: dict) -> None:
        self.write(columns)
        self.close()


def _arrow_type(pa, values: list):
    return pa.int64() if all(isinstance(v, int) for v in values) and values else pa.string()


WRITERS = {".parquet": ParquetWriter, ".npy": NpyWriter, ".jsonl": JsonlWriter}


def output_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise BgeortError(f"output {path}: unknown type {suffix or '(no extension)'!r}; name it with one of "
                          f"{sorted(WRITERS)}")
    return suffix


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.stem + ".ids.jsonl")


def _durable_close(stream) -> None:
    stream.flush()
    os.fsync(stream.fileno())
    stream.close()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
