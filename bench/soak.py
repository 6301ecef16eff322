"""`make soak`: many threads hammering one Embedder and one Reranker with mixed valid and invalid calls,
and `bgeort serve` (both models, on 127.0.0.1) with valid and invalid request bodies; every result is
checked against a sequential reference, every refusal for its 4xx status and OpenAI-shaped error body.
Errors, results checked, latency percentiles and RSS over time (this process's and the server's) go to
bench/results/soak.md (+ .json). Bounded in time and in calls; stops by itself.

    python bench/soak.py [--seconds 300] [--threads 16] [--max-calls 200000] [--no-server] [--quick]

Models: the real all-MiniLM-L6-v2 (../shared/models, exported once to bench/results/tmp/soak) and a
cross-encoder of the same shape with random weights (seed 0; a reranker's cost does not depend on its
weights). Texts: STS-B sentences and SciFact abstracts (long: truncated), plus 10% invalid calls that
must raise TypeError or ValueError naming their index.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import select
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

# (route, body, statuses it may get): request bodies bgeort serve must refuse with a 4xx and an error body
INVALID_HTTP = [
    ("/v1/embeddings", b'{"input": ["fine", null]}', {400}), ("/v1/embeddings", b'{"input": 5}', {400}),
    ("/v1/embeddings", b'{"input": ["ok", "bad \\ud800"]}', {400}), ("/v1/embeddings", b"not json", {400}),
    ("/v1/embeddings", b"", {400}), ("/v1/embeddings", b'{"input": []}', {400}),
    ("/v1/embeddings", json.dumps({"input": ["x"] * 2049}).encode(), {400, 413}),
    ("/v1/rerank", b'{"query": "q", "documents": [1]}', {400}), ("/v1/rerank", b'{"documents": ["p"]}', {400}),
    ("/v1/rerank", b'{"query": "q", "documents": ["p"], "top_n": 0}', {400}),
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


def rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # the process is gone
        pass
    return float("nan")


def dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection was closed by the other end: its socket reads as ready
    (EOF) with no request in flight. HTTP clients check this before reusing a pooled connection."""
    if connection.sock is None:
        return True
    readable, _, _ = select.select([connection.sock], [], [], 0)
    return bool(readable)


class Server:
    """`bgeort serve EMBEDDER --reranker RERANKER` on 127.0.0.1 (a free port), stopped by close()."""

    def __init__(self, embedder: Path, reranker: Path):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bgeort", "serve", str(embedder), "--reranker", str(reranker), "--host",
             "127.0.0.1", "--port", "0"], cwd=BENCH.parent, stdout=subprocess.PIPE, text=True)
        first = self.process.stdout.readline()  # "bgeort serve: ready at http://127.0.0.1:PORT"
        if "ready at http://127.0.0.1:" not in first:
            self.close()
            raise SystemExit(f"bgeort serve did not start: {first!r}")
        self.port = int(first.rsplit(":", 1)[1])
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # drain the rest

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Soak:
    """The shared models, the sequential references, and what the worker threads saw."""

    def __init__(self, embedder, reranker, texts: list[str], queries: list[str], server: Server | None = None):
        self.embedder, self.reranker, self.server = embedder, reranker, server
        self.connections = threading.local()  # one keep-alive connection per thread
        self.texts, self.queries = texts, queries
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.vectors = embedder.encode(texts)  # one call: the sequential reference
            self.scores = {q: reranker.compute_score([(q, t) for t in texts]) for q in queries}
        self.lock = threading.Lock()
        self.latencies = {"embed": [], "rerank": [], "invalid": []}
        if server is not None:
            self.latencies |= {"http embed": [], "http rerank": [], "http invalid": []}
        self.checked = self.mismatches = self.errors = 0
        self.failures: list[str] = []

    def post(self, route: str, body: bytes) -> tuple[int, dict | None]:
        """(status, parsed JSON body or None) over this thread's connection to the server."""
        connection = getattr(self.connections, "http", None)
        if connection is not None and dropped(connection):
            connection.close()  # the server closed it while idle (uvicorn's keep-alive timeout is 5 s)
            connection = None
        if connection is None:
            connection = self.connections.http = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=300)
        try:
            connection.request("POST", route, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnect on the next call
            self.connections.http = None
            raise
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, None

    def call_server(self, rng: random.Random) -> None:
        kind = rng.random()
        start = time.perf_counter()
        op = "http invalid" if kind < 0.1 else "http embed" if kind < 0.6 else "http rerank"
        try:
            if kind < 0.1:
                route, body, statuses = INVALID_HTTP[rng.randrange(len(INVALID_HTTP))]
                status, answer = self.post(route, body)
                error = (answer or {}).get("error") if isinstance(answer, dict) else None
                if status in statuses and isinstance(error, dict) and error.get("message"):
                    self.record(op, start, checked=1)
                else:
                    self.record(op, start, failure=f"{route} {body[:60]!r}: HTTP {status}, body {answer!r:.80}")
            elif kind < 0.6:
                picks = [rng.randrange(len(self.texts)) for _ in range(rng.choice([1, 1, 4, 16, 32]))]
                status, answer = self.post("/v1/embeddings", json.dumps(
                    {"input": [self.texts[i] for i in picks], "encoding_format": "float"}).encode())
                if status != 200:
                    self.record(op, start, failure=f"/v1/embeddings: HTTP {status}, body {answer!r:.120}")
                    return
                got = np.asarray([row["embedding"] for row in answer["data"]], dtype=np.float32)
                bad = int((np.abs(got - self.vectors[picks]).max(axis=1) > 1e-5).sum())
                self.record(op, start, checked=len(picks), mismatches=bad)
            else:
                query = self.queries[rng.randrange(len(self.queries))]
                picks = [rng.randrange(len(self.texts)) for _ in range(rng.choice([1, 5, 20]))]
                status, answer = self.post("/v1/rerank", json.dumps(
                    {"query": query, "documents": [self.texts[i] for i in picks], "raw_scores": True}).encode())
                if status != 200:
                    self.record(op, start, failure=f"/v1/rerank: HTTP {status}, body {answer!r:.120}")
                    return
                got = np.zeros(len(picks), dtype=np.float32)
                for result in answer["results"]:
                    got[result["index"]] = result["relevance_score"]
                bad = int((np.abs(got - self.scores[query][picks]) > 1e-4).sum()) + len(picks) - len(answer["results"])
                self.record(op, start, checked=len(picks), mismatches=bad)
        except Exception as exc:  # noqa: BLE001 - an unexpected error is what the soak counts
            self.record(op, start, failure=f"{op}: {type(exc).__name__}: {exc}"[:200])

    def call(self, rng: random.Random) -> None:
        if self.server is not None and rng.random() < 0.5:
            self.call_server(rng)
            return
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
    server = None if args.no_server else Server(embedder_dir, reranker_dir)
    try:
        return soak_with(args, embedder, reranker, texts, sentences, server)
    finally:
        if server is not None:
            server.close()


def soak_with(args, embedder, reranker, texts, sentences, server) -> dict:
    soak = Soak(embedder, reranker, texts, queries=sentences[:8], server=server)
    deadline = time.monotonic() + args.seconds
    calls = iter(range(args.max_calls))
    calls_lock = threading.Lock()

    def sample(at: float) -> tuple:
        return (round(at, 1), round(rss_mb(), 1)) + ((round(rss_mb(server.process.pid), 1),) if server else ())

    rss = [sample(0.0)]
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
        rss.append(sample(time.monotonic() - began))
    for thread in workers:  # each finishes the call it is in
        thread.join(timeout=120)
    rss.append(sample(time.monotonic() - began))
    alive = server is None or server.process.poll() is None
    seconds = time.monotonic() - began
    latency = {op: {f"p{p}": round(float(np.percentile(values, p)) * 1000, 2) for p in (50, 95, 99)} | {"calls": len(values)}
               for op, values in soak.latencies.items() if values}
    return {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1), "threads": args.threads,
        "calls": sum(len(v) for v in soak.latencies.values()), "results_checked": soak.checked,
        "mismatches": soak.mismatches, "errors": soak.errors, "failures": soak.failures,
        "latency_ms": latency, "rss_mb": rss, "server": None if server is None else {
            "command": " ".join(server.process.args[1:]), "alive_at_end": alive},
        "models": {"embedder": repr(embedder), "reranker": repr(reranker)},
        "environment": describe_environment([embedder._model.threads]),
    }


def to_markdown(result: dict) -> str:
    rss = [sample[1] for sample in result["rss_mb"]]
    lines = ["# Soak: one Embedder and one Reranker shared by many threads", "",
             f"Produced by `{result['command']}` ({result['seconds']} s, {result['threads']} threads; "
             f"{result['environment']['cores_usable']} cores, {result['environment']['cpu_model']}).", "",
             f"- Models: {result['models']['embedder']}; {result['models']['reranker']}",
             f"- Calls: {result['calls']} (10% invalid, each must raise TypeError/ValueError); rows checked "
             f"against the sequential reference: {result['results_checked']}",
             f"- **Mismatches: {result['mismatches']}; unexpected errors: {result['errors']}**",
             f"- RSS: {rss[0]:.0f} MB before the threads, {rss[1] if len(rss) > 1 else rss[0]:.0f} MB after the first "
             f"sample, {max(rss):.0f} MB peak, {rss[-1]:.0f} MB at the end"]
    server = result.get("server")
    if server:
        served = [sample[2] for sample in result["rss_mb"]]
        lines += [f"- Server: `{server['command']}` on 127.0.0.1, half of the calls as HTTP requests (10% of them "
                  f"invalid bodies, each must get its 4xx and an OpenAI-shaped error); alive at the end: "
                  f"**{server['alive_at_end']}**; its RSS {served[0]:.0f} MB at the start, {max(served):.0f} MB peak, "
                  f"{served[-1]:.0f} MB at the end"]
    lines += ["",
             "| call | calls | p50 ms | p95 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {op} | {v['calls']} | {v['p50']} | {v['p95']} | {v['p99']} |" for op, v in result["latency_ms"].items()]
    lines += ["", "RSS over time (s: MB" + (", server MB" if server else "") + "): " + ", ".join(
        f"{sample[0]:.0f}: " + "/".join(f"{mb:.0f}" for mb in sample[1:]) for sample in result["rss_mb"])]
    if result["failures"]:
        lines += ["", "## Failures (first 20)", ""] + [f"- {failure}" for failure in result["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-calls", type=int, default=200_000)
    parser.add_argument("--no-server", action="store_true", help="the library only, no bgeort serve")
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
