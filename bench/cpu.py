"""The CPU benchmark of issue 4: bgeort against sentence-transformers (PyTorch, ONNX, ONNX int8),
fastembed and optimum, interleaved in one session, at 1 and 2 threads.

    python bench/cpu.py                 # the full run (`make bench`), ~20 minutes on 2 cores
    python bench/cpu.py --quick         # a smoke run: small corpora, 1 round; writes to bench/results/tmp
    python bench/cpu.py --rounds 5 --threads 2 --peers bgeort-int8,st-torch

Writes cpu.json, cpu.md and cpu.png to --out. It measures and reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpora import SIZES, build_corpora  # noqa: E402
from environment import describe_environment, save_results  # noqa: E402
from isa import ISAS, MaskUnavailable, mark_environment, probe  # noqa: E402
from isa import environ as isa_environ  # noqa: E402
from make_models import DEFAULT_ROOT, st_int8_file  # noqa: E402
from peers import BGEORT_SHIPPED, DESCRIPTIONS, PEERS  # noqa: E402
from report import summarize, write_chart, write_markdown  # noqa: E402

DEFAULT_PEERS = tuple(p for p in PEERS if p != "bgeort-fp32-unfused")  # the unfused graph is optional
MODELS = {"bge-small": {"max_length": 512, "pooling": "cls"}, "minilm": {"max_length": 256, "pooling": "mean"}}
PAUSE_S = 0.2  # lets the previous peer's spinning threads go idle before the next one is timed


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def worker_env(threads: int, isa: str = "native") -> dict:
    """A worker's environment: every BLAS and OpenMP pool at `threads`, offline, quiet tokenizers, and
    the instruction-set mask for `isa` (bench/isa.py) preloaded."""
    return {**isa_environ(isa), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}


class Worker:
    """One peer in a subprocess, driven by JSON lines: its first line is a hello, then one answer a
    command. `command` is the process to start (default: worker.py for `model`)."""

    def __init__(self, peer: str, model: str, threads: int, args, corpora_file: Path | None = None, *,
                 command: list[str] | None = None, log_name: str | None = None):
        if command is None:
            settings = MODELS[model]
            command = [sys.executable, str(HERE / "worker.py"), "--peer", peer, "--base", str(args.models / model),
                       "--threads", str(threads), "--max-length", str(settings["max_length"]),
                       "--pooling", settings["pooling"], "--st-int8-file", st_int8_file(args.isa),
                       "--corpora", str(corpora_file)]
            if args.bgeort_max_batch_tokens:
                command += ["--bgeort-max-batch-tokens", str(args.bgeort_max_batch_tokens)]
        self.peer = peer
        self.stderr = open(args.log_dir / (log_name or f"{model}-{peer}-t{threads}.log"), "w")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, env=worker_env(threads, args.isa), cwd=REPO)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"worker {self.peer} exited ({self.process.returncode}); see {self.stderr.name}")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.process.stdin.write('{"op": "quit"}\n')
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=60)
        self.stderr.close()


def measure_gemm(threads: int, min_seconds: float, isa: str = "native") -> dict:
    env = {k: v for k, v in isa_environ(isa).items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, str(HERE / "gemm.py"), "--threads", str(threads),
                          "--min-seconds", str(min_seconds)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def token_lengths(corpora: dict, models: Path) -> dict:
    """Real tokens per text as the bge-small model runs it (special tokens in, truncated at 512)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models / "bge-small" / "bgeort" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MODELS["bge-small"]["max_length"])
    return {name: [len(e.ids) for e in tokenizer.encode_batch(texts)] for name, texts in corpora.items()}


def throughput(peers, threads: int, args, corpora_file: Path, corpora: dict) -> dict:
    """Interleaved rounds: every round runs each corpus once per peer, the peer order rotating."""
    log(f"throughput at {threads} thread(s): opening {len(peers)} peers")
    workers = [Worker(peer, "bge-small", threads, args, corpora_file) for peer in peers]
    result = {w.peer: {"hello": w.hello, "runs": {c: [] for c in corpora}, "latency": []} for w in workers}
    try:
        for w in workers:  # warm-up, and the equal-work check: the same chunks' vectors from everyone
            result[w.peer]["check_vectors"] = w.ask(op="vectors", corpus="rag", n=args.check_texts)["vectors"]
            w.ask(op="latency", n=3)
        for round_index in range(args.rounds):
            order = workers[round_index % len(workers):] + workers[: round_index % len(workers)]
            for corpus in corpora:
                for w in order:
                    time.sleep(PAUSE_S)
                    answer = w.ask(op="run", corpus=corpus)
                    result[w.peer]["runs"][corpus].append(answer["seconds"])
                    result[w.peer]["peak_rss"] = answer["peak_rss"]
            for w in order:
                time.sleep(PAUSE_S)
                result[w.peer]["latency"] += w.ask(op="latency", n=args.latency_queries)["seconds"]
            log(f"  round {round_index + 1}/{args.rounds} done: " + ", ".join(
                f"{w.peer} {statistics.median(result[w.peer]['runs']['short']):.2f}s" for w in workers))
    finally:
        for w in workers:
            w.close()
    return result


def rss_passes(peer: str, threads: int, args, corpora_file: Path) -> dict:
    log(f"peak RSS over {args.rss_passes} passes of the chunk corpus: {peer}")
    worker = Worker(peer, "bge-small", threads, args, corpora_file)
    try:
        passes = [worker.ask(op="run", corpus="rag") for _ in range(args.rss_passes)]
    finally:
        worker.close()
    return {"model_bytes": worker.hello["info"].get("model_bytes"), "rss_after_open": worker.hello["rss_after_open"],
            "rss": [p["rss"] for p in passes], "peak_rss": [p["peak_rss"] for p in passes],
            "seconds": [p["seconds"] for p in passes]}


def quality(peers, threads: int, args, corpora_file: Path) -> dict:
    out = {}
    for peer in peers:
        log(f"STS-B quality on all-MiniLM-L6-v2: {peer}")
        worker = Worker(peer, "minilm", threads, args, corpora_file)
        try:
            out[peer] = {"spearman": worker.ask(op="quality")["spearman"], "hello": worker.hello}
        finally:
            worker.close()
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small corpora, 1 round, 3 RSS passes; results go to bench/results/tmp/quick")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma-separated, or 'all' (default: all but bgeort-fp32-unfused). Known: {', '.join(PEERS)}")
    parser.add_argument("--latency-queries", type=int, help="single-text encodes per peer per round (default 30, quick 10)")
    parser.add_argument("--rss-passes", type=int, help="passes of the chunk corpus for the RSS check (default 10, quick 3)")
    parser.add_argument("--bgeort-max-batch-tokens", type=int, help="pass max_batch_tokens to bgeort.Embedder")
    parser.add_argument("--skip-quality", action="store_true", help="leave out the MiniLM STS-B columns")
    parser.add_argument("--models", type=Path, default=DEFAULT_ROOT, help="where the model folders are built")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, with --isa avx2 "
                        "bench/results/avx2, quick bench/results/tmp/quick)")
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="run every peer and the GEMM peak with cpuid hiding AVX-512, VNNI and AMX "
                        "(avx2: the issue's AVX2 CPU class, see bench/isa.py); default native")
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "full"
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.latency_queries = args.latency_queries or (10 if args.quick else 30)
    args.rss_passes = args.rss_passes or (3 if args.quick else 10)
    args.check_texts = 4
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    args.peer_list = list(PEERS) if args.peers == "all" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(args.peer_list) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    if "bgeort-fp32" not in args.peer_list:
        args.peer_list.insert(0, "bgeort-fp32")  # the reference for the equal-work check
    args.out = args.out or (HERE / "results" / "tmp" / "quick" if args.quick else
                            HERE / "results" / ("" if args.isa == "native" else args.isa))
    if args.isa != "native":
        try:
            args.isa_probe = probe(args.isa)
        except MaskUnavailable as exc:
            parser.error(f"--isa {args.isa}: {exc}")
    else:
        args.isa_probe = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_dir = HERE / "results" / "tmp" / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    for model in MODELS:  # in a subprocess: building imports torch, and the driver should stay small
        subprocess.run([sys.executable, str(HERE / "make_models.py"), "--root", str(args.models), "--only", model],
                       check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        log(f"model folder {model}: {args.models / model}")
    corpora = build_corpora(args.size)
    corpora_file = HERE / "results" / "tmp" / f"corpora-{args.size}.json"
    corpora_file.write_text(json.dumps(corpora))
    environment = mark_environment(describe_environment(args.thread_counts), args.isa, args.isa_probe)
    log(f"GEMM peak at {args.thread_counts} thread(s)")
    gemm = {t: measure_gemm(t, 0.5 if args.quick else 2.0, args.isa) for t in args.thread_counts}
    runs = {t: throughput(args.peer_list, t, args, corpora_file, corpora) for t in args.thread_counts}
    top = max(args.thread_counts)
    rss = {p: rss_passes(p, top, args, corpora_file) for p in BGEORT_SHIPPED if p in args.peer_list}
    scores = {} if args.skip_quality else quality(args.peer_list, top, args, corpora_file)
    raw = {
        "command": " ".join(["python", "bench/cpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "size": args.size, "rounds": args.rounds, "corpus_sizes": SIZES[args.size],
        "threads": args.thread_counts, "peers": args.peer_list, "descriptions": DESCRIPTIONS,
        "bgeort_max_batch_tokens": args.bgeort_max_batch_tokens,
        "token_lengths": token_lengths(corpora, args.models), "environment": environment,
        "gemm": {str(t): g for t, g in gemm.items()}, "throughput": {str(t): r for t, r in runs.items()},
        "rss_passes": rss, "quality": scores, "load_average_end": os.getloadavg(),
        "wall_seconds": None,
    }
    raw["wall_seconds"] = time.time() - started
    summary = summarize(raw)
    report = save_results(args.out, "cpu", summary, raw, write_markdown)
    write_chart(summary, args.out / "cpu.png", args.isa)
    log(f"done in {raw['wall_seconds'] / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
