"""`make soak`: many threads hammering one Embedder and one Reranker with mixed valid and invalid calls,
every result checked against a sequential reference; errors, results checked, latency percentiles and
RSS over time go to bench/results/soak.md (+ .json). Bounded in time and in calls; stops by itself.

    python bench/soak.py [--seconds 300] [--threads 16] [--max-calls 200000] [--quick]

Models: the real all-MiniLM-L6-v2 (../shared/models, exported once to bench/results/tmp/soak) and a
cross-encoder of the same shape with random weights (seed 0; a reranker's cost does not depend on its
weights). Texts: STS-B sentences and SciFact abstracts (long: truncated), plus 10% invalid calls that
must raise TypeError or ValueError naming their index.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from corpora import MINILM_DIR, scifact_texts, stsb_pairs  # noqa: E402
from environment import describe_environment  # noqa: E402

RESULTS = BENCH / "results"
WORK = RESULTS / "tmp" / "soak"
INVALID = [  # (call, arguments) that must raise TypeError or ValueError
    ("embed", ["fine", None]), ("embed", [b"bytes"]), ("embed", ["ok", "bad \ud800"]), ("embed", None),
    ("rerank", [("q", "p"), ("q",)]), ("rerank", [("q", None)]), ("rerank", [("q\udc80", "p")]),
]


def export_models(work: Path) -> tuple[Path, Path]:
    """The MiniLM embedder and a random cross-encoder of its shape, exported once (python -m export)."""
    embedder, reranker = work / "models" / "minilm", work / "models" / "cross-encoder"
    if not (embedder / "bgeort.json").is_file():
        subprocess.run([sys.executable, "-m", "export", str(MINILM_DIR), "--out", str(embedder.parent), "--name",
                        "minilm", "--precisions", "fp32,int8"], cwd=BENCH.parent, check=True)
    if not (reranker / "bgeort.json").is_file():
        source = work / "cross-encoder-src"
        make_cross_encoder(source)
        subprocess.run([sys.executable, "-m", "export", str(source), "--out", str(reranker.parent), "--name",
                        "cross-encoder", "--precisions", "fp32,int8"], cwd=BENCH.parent, check=True)
    return embedder, reranker


def make_cross_encoder(folder: Path) -> None:
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(str(MINILM_DIR), num_labels=1)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(MINILM_DIR / name, folder / name)


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Soak:
    """The shared models, the sequential references, and what the worker threads saw."""

    def __init__(self, embedder, reranker, texts: list[str], queries: list[str]):
        self.embedder, self.reranker = embedder, reranker
        self.texts, self.queries = texts, queries
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.vectors = embedder.encode(texts)  # one call: the sequential reference
            self.scores = {q: reranker.compute_score([(q, t) for t in texts]) for q in queries}
        self.lock = threading.Lock()
        self.latencies = {"embed": [], "rerank": [], "invalid": []}
        self.checked = self.mismatches = self.errors = 0
        self.failures: list[str] = []

    def call(self, rng: random.Random) -> None:
        kind = rng.random()
        start = time.perf_counter()
        try:
            if kind < 0.1:
                op, argument = INVALID[rng.randrange(len(INVALID))]
                try:
                    (self.embedder.encode if op == "embed" else self.reranker.compute_score)(argument)
                except (TypeError, ValueError):
                    self.record("invalid", start, checked=1)
                else:
                    self.record("invalid", start, failure=f"{op}({argument!r:.60}) did not raise")
            elif kind < 0.6:
                picks = [rng.randrange(len(self.texts)) for _ in range(rng.choice([1, 1, 4, 16, 32]))]
                got = self.embedder.encode([self.texts[i] for i in picks])
                bad = int((np.abs(got - self.vectors[picks]).max(axis=1) > 1e-5).sum())
                self.record("embed", start, checked=len(picks), mismatches=bad)
            else:
                query = self.queries[rng.randrange(len(self.queries))]
                picks = [rng.randrange(len(self.texts)) for _ in range(rng.choice([1, 5, 20]))]
                got = self.reranker.compute_score([(query, self.texts[i]) for i in picks])
                bad = int((np.abs(np.atleast_1d(got) - self.scores[query][picks]) > 1e-4).sum())
                self.record("rerank", start, checked=len(picks), mismatches=bad)
        except Exception as exc:  # noqa: BLE001 - an unexpected error is what the soak counts
            self.record("embed" if kind < 0.6 else "rerank", start, failure=f"{type(exc).__name__}: {exc}"[:200])

    def record(self, op: str, start: float, *, checked: int = 0, mismatches: int = 0, failure: str | None = None):
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latencies[op].append(elapsed)
            self.checked += checked
            self.mismatches += mismatches
            if failure is not None:
                self.errors += 1
                if len(self.failures) < 20:
                    self.failures.append(failure)


def run(args) -> dict:
    import bgeort

    embedder_dir, reranker_dir = export_models(WORK)
    first, second, _ = stsb_pairs()
    sentences = list(dict.fromkeys(first + second))[:600]
    abstracts = scifact_texts()[:200]
    texts = sentences + abstracts  # short and long (past 256 tokens: truncated)
    embedder = bgeort.Embedder(embedder_dir)
    reranker = bgeort.Reranker(reranker_dir)
    soak = Soak(embedder, reranker, texts, queries=sentences[:8])
    deadline = time.monotonic() + args.seconds
    calls = iter(range(args.max_calls))
    calls_lock = threading.Lock()
    rss = [(0.0, rss_mb())]
    began = time.monotonic()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            with calls_lock:
                if next(calls, None) is None:
                    return
            soak.call(rng)

    warnings.simplefilter("ignore")  # truncation warnings: expected for the abstracts
    workers = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(args.threads)]
    for thread in workers:
        thread.start()
    while any(thread.is_alive() for thread in workers) and time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        rss.append((round(time.monotonic() - began, 1), round(rss_mb(), 1)))
    for thread in workers:  # each finishes the call it is in
        thread.join(timeout=120)
    rss.append((round(time.monotonic() - began, 1), round(rss_mb(), 1)))
    seconds = time.monotonic() - began
    latency = {op: {f"p{p}": round(float(np.percentile(values, p)) * 1000, 2) for p in (50, 95, 99)} | {"calls": len(values)}
               for op, values in soak.latencies.items() if values}
    return {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1), "threads": args.threads,
        "calls": sum(len(v) for v in soak.latencies.values()), "results_checked": soak.checked,
        "mismatches": soak.mismatches, "errors": soak.errors, "failures": soak.failures,
        "latency_ms": latency, "rss_mb": rss,
        "models": {"embedder": repr(embedder), "reranker": repr(reranker)},
        "environment": describe_environment([embedder._model.threads]),
    }


def to_markdown(result: dict) -> str:
    rss = [mb for _, mb in result["rss_mb"]]
    lines = ["# Soak: one Embedder and one Reranker shared by many threads", "",
             f"Produced by `{result['command']}` ({result['seconds']} s, {result['threads']} threads; "
             f"{result['environment']['cores_usable']} cores, {result['environment']['cpu_model']}).", "",
             f"- Models: {result['models']['embedder']}; {result['models']['reranker']}",
             f"- Calls: {result['calls']} (10% invalid, each must raise TypeError/ValueError); rows checked "
             f"against the sequential reference: {result['results_checked']}",
             f"- **Mismatches: {result['mismatches']}; unexpected errors: {result['errors']}**",
             f"- RSS: {rss[0]:.0f} MB before the threads, {rss[1] if len(rss) > 1 else rss[0]:.0f} MB after the first "
             f"sample, {max(rss):.0f} MB peak, {rss[-1]:.0f} MB at the end", "",
             "| call | calls | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {op} | {v['calls']} | {v['p50']} | {v['p95']} | {v['p99']} |" for op, v in result["latency_ms"].items()]
    lines += ["", "RSS over time (s, MB): " + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in result["rss_mb"])]
    if result["failures"]:
        lines += ["", "## Failures (first 20)", ""] + [f"- {failure}" for failure in result["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-calls", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="20 s, 8 threads, written under results/tmp")
    parser.add_argument("--out", type=Path, help="output path without suffix (default bench/results/soak)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.threads = 20, 8
    result = run(args)
    stem = args.out or (WORK / "soak-quick" if args.quick else RESULTS / "soak")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
