"""The corpus job end to end: `bgeort embed MODEL corpus.jsonl -o out.parquet` against the same texts
already in memory (Embedder.encode), its peak RSS at two corpus sizes, and peers over the same file.

    python bench/corpus.py                 # 100,000 texts; RSS at 10,000 vs 200,000; writes bench/results/corpus.md
    python bench/corpus.py --quick         # 2,000 texts, RSS at 1,000 vs 4,000: a smoke run, writes nothing by default

Texts are real (../shared/data): STS-B sentences (every split) and SciFact abstracts, whole and cut into
sentences, interleaved and repeated in order up to the size asked. The model is bench/make_models.py's
`minilm` folder set (real all-MiniLM-L6-v2 weights: bgeort's export, the sentence-transformers folder and
fastembed's copy). 2 threads, bgeort int8. Each peer reads the JSONL with its own loop. No assertion:
the targets are reported next to the numbers (CLI >= 95% of in-memory encode; RSS within 50 MB).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpora import DATA, SCIFACT  # noqa: E402
from make_models import DEFAULT_ROOT, make_model, st_int8_file  # noqa: E402

RESULTS = HERE / "results"


def real_texts(kind: str = "mixed") -> list[str]:
    """STS-B sentences and SciFact abstracts (whole and cut into sentences), interleaved; 'sentences'
    leaves out the whole abstracts."""
    sentences = []
    for path in sorted((DATA / "stsb").glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as stream:
            for row in csv.reader(stream):
                sentences += [row[0], row[1]]
    abstracts = []
    with gzip.open(SCIFACT, "rt", encoding="utf-8") as stream:
        for line in stream:
            doc = json.loads(line)
            text = (doc["title"] + " " + doc["text"]).strip()
            if kind == "mixed":
                abstracts.append(text)
            abstracts += [part.strip() + "." for part in doc["text"].split(". ") if len(part) > 20]
    mixed = []
    for i in range(max(len(sentences), len(abstracts))):  # interleaved: every window sees both kinds
        mixed += [sentences[i]] if i < len(sentences) else []
        mixed += [abstracts[i]] if i < len(abstracts) else []
    return mixed


def write_corpus(path: Path, texts: list[str], rows: int) -> Path:
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(rows):
            stream.write(json.dumps({"id": f"doc{i}", "text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    return path


# Linux starts a forked child's ru_maxrss at its parent's RSS, so a child of this (large, peers loaded)
# process would report at least this process's size: a fresh small Python forks the command instead
# and reports that child's own peak (KiB) on its last stderr line.
LAUNCHER = ("import os, resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB of that command alone, its stderr's last line)."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", LAUNCHER, *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    lines = process.stderr.strip().splitlines()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr}")
    return wall, int(lines[-1]) // 1024, (lines[-2] if len(lines) > 1 else "")


def cli_command(folder: Path, source: Path, out: Path, threads: int) -> list[str]:
    return [sys.executable, "-m", "bgeort", "embed", str(folder), str(source), "-o", str(out), "--precision", "int8",
            "--threads", str(threads), "--quiet", "--overwrite"]


def in_memory(folder: Path, source: Path, threads: int) -> tuple[float, int]:
    import warnings

    import bgeort

    texts = [json.loads(line)["text"] for line in open(source, encoding="utf-8")]
    model = bgeort.Embedder(folder, precision="int8", device="cpu", threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bgeort.TruncationWarning)
        model.encode(texts[:256])  # warm: the side session opens, buffers are allocated
        started = time.perf_counter()
        model.encode(texts)
        return time.perf_counter() - started, len(texts)


def peer_over_file(peer: str, base: Path, source: Path, threads: int) -> float:
    """Seconds for a peer to embed the file, reading it with its own loop (fastembed: its embed()
    generator over a generator of lines; sentence-transformers: encode over the list)."""
    import numpy as np
    from peers import open_peer

    encode, _ = open_peer(peer, base, threads=threads, max_length=256, pooling="mean", st_int8_file=st_int8_file())
    encode(["warm up"] * 8)
    started = time.perf_counter()
    lines = (json.loads(line)["text"] for line in open(source, encoding="utf-8"))
    # fastembed's encode (bench/peers.py) is np.stack(list(model.embed(texts))): its generator over ours
    np.asarray(encode(lines if peer == "fastembed" else list(lines)))
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--rows", type=int, help="texts in the speed run (default 100,000; --quick 2,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", default="fastembed,st-torch", help="comma-separated; '' for none")
    parser.add_argument("--models", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--folder", type=Path, help="a bgeort model folder to use instead of make_models' minilm "
                                                    "(no peers then)")
    parser.add_argument("--rss-sizes", help="the two corpus sizes whose peak RSS is compared (default 10000,200000; "
                        "--quick 1000,4000)")
    parser.add_argument("--rss-only", action="store_true", help="only the RSS comparison (no speed run, no peers)")
    parser.add_argument("--rss-corpus", choices=("mixed", "sentences"), default="mixed",
                        help="texts of the RSS runs: the speed run's mix, or its sentences only (no whole "
                             "abstracts: 200,000 rows in minutes on 2 cores)")
    parser.add_argument("--rss-repeat", action="store_true",
                        help="every RSS corpus repeats the smallest one's texts (the same longest batches at every size)")
    parser.add_argument("--out", type=Path, help="report file (default: bench/results/corpus.md, none with --quick)")
    args = parser.parse_args(argv)
    rows = args.rows or (2000 if args.quick else 100_000)
    rss_sizes = ((1000, 4000) if args.quick else (10_000, 200_000)) if not args.rss_sizes else tuple(
        int(size) for size in args.rss_sizes.split(","))
    if args.folder:
        base, folder, args.peers = None, args.folder, ""
    else:
        base = make_model("minilm", args.models)
        folder = base / "bgeort"
    texts = real_texts()
    from environment import environment_line

    lines = [f"# Corpus job: `bgeort embed` over a JSONL file ({platform.machine()}, {args.threads} threads, int8)", "",
             environment_line(), ""]
    with tempfile.TemporaryDirectory(prefix="bgeort-corpus-bench-") as tmp:
        tmp = Path(tmp)
        if not args.rss_only:
            source = write_corpus(tmp / "corpus.jsonl", texts, rows)
            memory_seconds, count = in_memory(folder, source, args.threads)
            wall, _, last = run_measured(cli_command(folder, source, tmp / "out.parquet", args.threads))
            job_seconds = float(last.split(" s -> ")[0].rsplit(", ", 1)[-1])
            lines += [f"{count:,} texts (STS-B sentences and SciFact abstracts and sentences, interleaved).", "",
                      "| run | seconds | texts/s | vs encode in memory | target |", "| --- | ---: | ---: | ---: | --- |",
                      f"| Embedder.encode, texts in memory | {memory_seconds:.1f} | {count / memory_seconds:,.0f} | 1.00 | |",
                      f"| bgeort embed (the job's own seconds) | {job_seconds:.1f} | {count / job_seconds:,.0f} | "
                      f"{memory_seconds / job_seconds:.3f} | >= 0.95 |",
                      f"| bgeort embed (process wall, model open included) | {wall:.1f} | {count / wall:,.0f} | "
                      f"{memory_seconds / wall:.3f} | |"]
            for peer in [p for p in args.peers.split(",") if p]:
                seconds = peer_over_file(peer, base, source, args.threads)
                lines.append(f"| {peer} over the file | {seconds:.1f} | {count / seconds:,.0f} | "
                             f"{memory_seconds / seconds:.3f} | |")
            lines += ["", f"CLI last line: `{last}`"]
        rss_texts = real_texts(args.rss_corpus)
        if args.rss_repeat:  # the same texts, so the same batch shapes, at every size: only the row count differs
            rss_texts = rss_texts[:rss_sizes[0]]
        lines += ["", f"Peak RSS of `bgeort embed` alone (its own process's ru_maxrss, forked by a fresh launcher), "
                  f"texts: STS-B sentences and SciFact {'abstracts and sentences' if args.rss_corpus == 'mixed' else 'sentences (no whole abstracts)'}"
                  + (f", the first {rss_sizes[0]:,} repeated to fill each size." if args.rss_repeat else "."),
                  "", "| rows | peak RSS (MB) | CLI last line |", "| ---: | ---: | --- |"]
        peaks = []
        for size in rss_sizes:
            sized = write_corpus(tmp / f"rss-{size}.jsonl", rss_texts, size)
            _, peak, last = run_measured(cli_command(folder, sized, tmp / f"rss-{size}.parquet", args.threads))
            peaks.append(peak)
            lines.append(f"| {size:,} | {peak} | `{last.split(' -> ')[0]}` |")
        lines += ["", f"Peak RSS difference: {peaks[-1] - peaks[0]} MB (target: within 50 MB)", "",
                  f"Command: `python bench/corpus.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    report = "\n".join(lines) + "\n"
    print(report)
    out = args.out or (None if args.quick else RESULTS / "corpus.md")
    if out is not None:
        out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
