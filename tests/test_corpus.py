"""`bgeort embed MODEL INPUT... -o OUTPUT`, run for real as subprocesses on generated files: every input
and output format, resuming after SIGKILL at several points, and every kind of bad input."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bgeort

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = [("the quick brown fox " * (i % 9 + 1)).strip() + f" {i} é" for i in range(60)]


def cli(*args, stdin: bytes | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bgeort", *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stderr.decode()


def read_output(path: Path) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, tokens, truncated) from any output format."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        width = table.schema.field("embedding").type.list_size
        vectors = np.array(table.column("embedding").to_pylist()).reshape(table.num_rows, width)
        return (table.column("id").to_pylist(), vectors, np.array(table.column("tokens").to_pylist()),
                np.array(table.column("truncated").to_pylist()))
    if path.suffix == ".npy":
        rows = [json.loads(line) for line in path.with_name(path.stem + ".ids.jsonl").read_text().splitlines()]
        return ([r["id"] for r in rows], np.load(path), np.array([r["tokens"] for r in rows]),
                np.array([r["truncated"] for r in rows]))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return ([r["id"] for r in rows], np.array([r["embedding"] for r in rows]), np.array([r["tokens"] for r in rows]),
            np.array([r["truncated"] for r in rows]))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def expected(tiny_model):
    model = bgeort.Embedder(tiny_model)
    return model.encode_corpus(TEXTS), model.token_counts(TEXTS)


def make_inputs(folder: Path) -> dict[str, Path]:
    rows = [{"text": text, "doc": f"d{i}"} for i, text in enumerate(TEXTS)]
    made = {"jsonl": write_jsonl(folder / "in.jsonl", rows)}
    made["txt"] = folder / "in.txt"
    made["txt"].write_text("".join(text + "\n" for text in TEXTS), encoding="utf-8")
    for name, delimiter in (("csv", ","), ("tsv", "\t")):
        made[name] = folder / f"in.{name}"
        with open(made[name], "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=["doc", "text"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    made["parquet"] = folder / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), made["parquet"], row_group_size=7)  # several row groups
    made["jsonl.gz"] = folder / "in.jsonl.gz"
    made["jsonl.gz"].write_bytes(gzip.compress(made["jsonl"].read_bytes()))
    made["txt.gz"] = folder / "in.txt.gz"
    made["txt.gz"].write_bytes(gzip.compress(made["txt"].read_bytes()))
    return made


@pytest.mark.parametrize("kind", ["jsonl", "txt", "csv", "tsv", "parquet", "jsonl.gz", "txt.gz"])
def test_every_input_format_embeds_as_encode_corpus(tiny_model, tmp_path, expected, kind):
    source = make_inputs(tmp_path)[kind]
    out = tmp_path / "out.jsonl"
    last = ok(cli("embed", tiny_model, source, "-o", out, "--quiet")).strip().splitlines()[-1]
    ids, vectors, tokens, truncated = read_output(out)
    assert ids == list(range(len(TEXTS)))
    np.testing.assert_array_equal(vectors.astype(np.float32), expected[0])  # JSON round-trips float32 exactly
    np.testing.assert_array_equal(tokens, expected[1])
    assert not truncated.any()
    assert last.startswith(f"{len(TEXTS)} texts, {int(expected[1].sum())} tokens, 0 truncated, 0 rejected rows")


def test_stdin_several_inputs_one_stream_and_id_field(tiny_model, tmp_path, expected):
    made = make_inputs(tmp_path)
    out = tmp_path / "out.parquet"
    ok(cli("embed", tiny_model, made["txt"], "-", "-o", out, "--quiet", stdin=made["txt"].read_bytes()))
    ids, vectors, _, _ = read_output(out)
    assert ids == list(range(2 * len(TEXTS)))  # row numbers run on across inputs
    np.testing.assert_array_equal(vectors, np.concatenate([expected[0], expected[0]]))
    out = tmp_path / "ids.parquet"
    ok(cli("embed", tiny_model, made["csv"], made["parquet"], "-o", out, "--id-field", "doc", "--quiet"))
    ids, vectors, _, _ = read_output(out)
    assert ids == [f"d{i}" for i in range(len(TEXTS))] * 2
    np.testing.assert_array_equal(vectors, np.concatenate([expected[0], expected[0]]))


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "binary", "ubinary"])
def test_every_output_format_and_stored_type(tiny_model, tmp_path, expected, suffix, dtype):
    source = make_inputs(tmp_path)["jsonl"]
    out = tmp_path / f"out{suffix}"
    ok(cli("embed", tiny_model, source, "-o", out, "--output-dtype", dtype, "--quiet", "--chunk-rows", "16"))
    ids, vectors, tokens, _ = read_output(out)
    want = bgeort.Embedder(tiny_model).quantize(expected[0], dtype)
    assert ids == list(range(len(TEXTS))) and tokens.tolist() == expected[1].tolist()
    np.testing.assert_array_equal(vectors, want)
    if suffix == ".npy":
        assert np.load(out).dtype == want.dtype
    if suffix == ".parquet":
        field = pq.read_schema(out).field("embedding").type
        assert pa.types.is_fixed_size_list(field) and field.list_size == want.shape[1]
        assert field.value_type == pa.from_numpy_dtype(want.dtype)
    assert not (tmp_path / f"out{suffix}.partial").exists()


def test_long_texts_are_counted_as_truncated(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": text} for text in TEXTS])
    out = tmp_path / "out.jsonl"
    last = ok(cli("embed", tiny_model, source, "-o", out, "--max-length", "8", "--quiet")).splitlines()[-1]
    _, vectors, tokens, truncated = read_output(out)
    counts = bgeort.Embedder(tiny_model).token_counts(TEXTS)
    assert truncated.tolist() == (counts > 8).tolist() and tokens.max() == 8
    assert f"{int((counts > 8).sum())} truncated" in last
    np.testing.assert_array_equal(vectors.astype(np.float32),
                                  bgeort.Embedder(tiny_model).encode(TEXTS, max_length=8))


# --- resuming ---

def corpus_rows(n: int) -> list[dict]:
    return [{"text": f"{TEXTS[i % len(TEXTS)]} row {i}"} for i in range(n)]


def journal_rows(out: Path) -> int:
    try:
        return json.loads((out.parent / (out.name + ".partial") / "journal.json").read_text())["rows_read"]
    except (OSError, ValueError):
        return 0


def start(tiny_model, source, out, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bgeort", "embed", str(tiny_model), str(source), "-o", str(out),
                             "--chunk-rows", "8", "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, out: Path, rows: int, sig=signal.SIGKILL) -> None:
    deadline = time.monotonic() + 120
    while journal_rows(out) < rows and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(sig)
    process.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_killed_at_any_point_and_resumed_equals_an_uninterrupted_run(tiny_model, tmp_path, suffix):
    total = 1200
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(total))
    reference = tmp_path / f"reference{suffix}"
    ok(cli("embed", tiny_model, source, "-o", reference, "--chunk-rows", "8", "--quiet"))
    want = read_output(reference)
    out = tmp_path / f"out{suffix}"
    process = start(tiny_model, source, out)
    time.sleep(0.05)  # early: before the model is open or any part is saved
    process.kill()
    process.communicate(timeout=60)
    kills = 0
    for rows in (8, total // 2, total - 16):  # after the first part, mid-run, near the end
        process = start(tiny_model, source, out)
        kill_when(process, out, rows)
        kills += process.returncode == -signal.SIGKILL
        assert not out.exists() or journal_rows(out) == 0  # no file that looks complete
    assert kills >= 2
    done = ok(cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet"))
    assert "(resumed)" in done
    got = read_output(out)
    assert got[0] == want[0] == list(range(total))  # no duplicates, no gaps
    for mine, theirs in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(mine, theirs)
    assert not (tmp_path / f"out{suffix}.partial").exists()


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(1200))
    out = tmp_path / "out.jsonl"
    process = start(tiny_model, source, out)
    deadline = time.monotonic() + 120
    while journal_rows(out) < 16 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr.decode()
    assert b"run the same command to continue" in stderr
    ok(cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet"))
    assert read_output(out)[0] == list(range(1200))


def test_another_job_against_a_partial_is_refused_with_what_differs(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(600))
    out = tmp_path / "out.parquet"
    process = start(tiny_model, source, out)
    kill_when(process, out, 16)
    done = cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet", "--output-dtype", "float16")
    message = done.stderr.decode()
    assert done.returncode == 1 and "partial output of a different job" in message
    assert 'options.output_dtype: "float32" before, "float16" now' in message and "--overwrite" in message
    assert journal_rows(out) >= 16  # left as it was
    ok(cli("embed", tiny_model, source, "-o", out, "--quiet", "--output-dtype", "float16", "--overwrite"))
    assert pq.read_schema(out).field("embedding").type.value_type == pa.float16()
    assert read_output(out)[0] == list(range(600))


def test_an_existing_output_is_never_overwritten_without_overwrite(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(10))
    out = tmp_path / "out.jsonl"
    out.write_text("my precious data\n")
    done = cli("embed", tiny_model, source, "-o", out, "--quiet")
    assert done.returncode == 1 and b"exists and is not a partial output of this job" in done.stderr
    assert out.read_text() == "my precious data\n"
    ok(cli("embed", tiny_model, source, "-o", out, "--quiet", "--overwrite"))
    assert read_output(out)[0] == list(range(10))


def test_a_write_error_stops_with_the_path_and_stays_resumable(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(400))
    out = tmp_path / "out.npy"
    process = start(tiny_model, source, out)
    kill_when(process, out, 16)
    partial = tmp_path / "out.npy.partial"
    parts = len(json.loads((partial / "journal.json").read_text())["parts"])
    blocker = partial / f"part-{parts:06d}.tmp"
    blocker.unlink(missing_ok=True)  # the killed job may have left that part half written
    blocker.mkdir()  # the next part cannot be written (a directory stands where its file goes)
    done = cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet")
    assert done.returncode == 1 and f"cannot write {partial / f'part-{parts:06d}.npz'}".encode() in done.stderr
    assert b"run the same command again" in done.stderr and not out.exists()
    blocker.rmdir()
    ok(cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet"))
    assert read_output(out)[0] == list(range(400))
    np.testing.assert_array_equal(np.load(out), bgeort.Embedder(tiny_model).encode([r["text"] for r in corpus_rows(400)]))
    parent_is_a_file = tmp_path / "file"
    parent_is_a_file.write_text("")
    done = cli("embed", tiny_model, source, "-o", parent_is_a_file / "out.npy", "--quiet")
    assert done.returncode == 1 and b"cannot write" in done.stderr and str(parent_is_a_file).encode() in done.stderr


# --- bad input ---

BAD_CASES = {
    "malformed JSON": ('{"text": "fine"}\n{"text": "broken\n{"text": "fine"}\n', "in.jsonl:2: not valid JSON"),
    "missing field": ('{"text": "fine"}\n{"body": "no text", "id": 3}\n', "in.jsonl:2: no field 'text' (the row has ['body', 'id'])"),
    "null text": ('{"text": "fine"}\n{"text": null}\n', "in.jsonl:2: field 'text' is null, not a string"),
    "number text": ('{"text": 5}\n', "in.jsonl:1: field 'text' is int 5, not a string"),
    "not an object": ('{"text": "fine"}\n["a", "list"]\n', "in.jsonl:2: a JSON list, not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_stop_with_file_and_line_or_are_set_aside(tiny_model, tmp_path, case):
    content, message = BAD_CASES[case]
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = cli("embed", tiny_model, source, "-o", out, "--quiet")
    assert done.returncode == 1 and message in done.stderr.decode() and "--on-error skip" in done.stderr.decode()
    assert not out.exists()
    last = ok(cli("embed", tiny_model, source, "-o", out, "--quiet", "--on-error", "skip")).splitlines()[-1]
    rejected = [json.loads(line) for line in (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()]
    good = len(content.splitlines()) - 1
    assert len(rejected) == 1 and message in rejected[0]["reason"] and "1 rejected rows" in last
    ids = read_output(out)[0] if good else []
    assert ids == [i for i in range(good + 1) if i != rejected[0]["row"]]


def test_bad_csv_rows_and_non_utf8_lines_are_named(tiny_model, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('id,text\n1,fine\n2,too,many\n3,"also fine"\n', encoding="utf-8")
    done = cli("embed", tiny_model, source, "-o", tmp_path / "out.jsonl", "--quiet")
    assert done.returncode == 1 and "in.csv:3: 3 fields where the header has 2" in done.stderr.decode()
    text = tmp_path / "in.txt"
    text.write_bytes(b"fine\nnot \xff utf-8\nfine again\n")
    out = tmp_path / "text.jsonl"
    done = cli("embed", tiny_model, text, "-o", out, "--quiet")
    assert done.returncode == 1 and "in.txt:2: field 'text' is not valid UTF-8" in done.stderr.decode()
    ok(cli("embed", tiny_model, text, "-o", out, "--quiet", "--on-error", "skip"))
    assert read_output(out)[0] == [0, 2]
    rejected = (tmp_path / "text.jsonl.rejected.jsonl").read_bytes()
    assert b"not \xff utf-8" in rejected  # the row as it was, byte for byte


def test_empty_inputs_give_an_empty_output_and_say_so(tiny_model, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("")
    for suffix in (".parquet", ".npy", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        message = ok(cli("embed", tiny_model, source, "-o", out, "--quiet"))
        assert "the inputs hold no rows" in message and out.exists()
        ids, vectors, _, _ = read_output(out)
        assert ids == [] and len(vectors) == 0
    assert np.load(tmp_path / "out.npy").shape == (0, 32)


def test_unknown_and_missing_inputs_say_what_to_do(tiny_model, tmp_path):
    done = cli("embed", tiny_model, tmp_path / "nowhere.jsonl", "-o", tmp_path / "out.jsonl")
    assert done.returncode == 1 and b"cannot read input" in done.stderr and b"nowhere.jsonl" in done.stderr
    (tmp_path / "in.xml").write_text("<a/>")
    done = cli("embed", tiny_model, tmp_path / "in.xml", "-o", tmp_path / "out.jsonl")
    assert done.returncode == 1 and b"--input-format" in done.stderr
    done = cli("embed", tiny_model, write_jsonl(tmp_path / "in.jsonl", []), "-o", tmp_path / "out.csv")
    assert done.returncode == 1 and b"unknown type '.csv'" in done.stderr


def test_a_second_process_on_the_same_output_is_refused(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", corpus_rows(6000))
    out = tmp_path / "out.jsonl"
    process = start(tiny_model, source, out)
    try:
        deadline = time.monotonic() + 120
        while journal_rows(out) < 8 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        done = cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet")
        assert done.returncode == 1 and b"another bgeort process is writing" in done.stderr
    finally:
        process.kill()
        process.communicate(timeout=60)
    ok(cli("embed", tiny_model, source, "-o", out, "--chunk-rows", "8", "--quiet"))
    assert read_output(out)[0] == list(range(6000))
