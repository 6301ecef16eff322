"""One library under test in its own process: `cpu.py` starts one per (model, peer, threads) and
drives it with one JSON command per line on stdin; answers are JSON lines on the original stdout
(library output goes to stderr). Keeping each peer in its own process gives honest import times
and peak RSS, and lets the driver interleave peers (A B A B) while every model stays open.

Commands: {"op": "run", "corpus": NAME} -> seconds for one encode of the corpus;
{"op": "latency", "n": K} -> seconds of K single-text encodes; {"op": "vectors", "corpus": NAME,
"n": K} -> the first K vectors; {"op": "quality"} -> STS-B Spearman x 100; {"op": "rss"};
{"op": "quit"}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from corpora import stsb_pairs  # noqa: E402
from peers import import_library, open_peer  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """VmHWM: this process image's peak RSS. (ru_maxrss would not do: Linux carries it over from
    the parent through fork and exec, so a worker of a big driver would report the driver's.)"""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def sts_spearman(encode) -> float:
    first, second, gold = stsb_pairs()
    a, b = encode(first), encode(second)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    from scipy.stats import spearmanr  # scipy comes with sentence-transformers (the bench extra)

    return 100 * float(spearmanr((a * b).sum(1), gold).statistic)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--pooling", required=True)
    parser.add_argument("--st-int8-file", required=True)
    parser.add_argument("--corpora", type=Path, required=True)
    parser.add_argument("--bgeort-max-batch-tokens", type=int)
    args = parser.parse_args()

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr

    def reply(**message):
        protocol.write(json.dumps(message) + "\n")

    start = time.perf_counter()
    ort_import_s = 0.0
    if args.peer != "st-torch":
        import onnxruntime  # noqa: F401

        ort_import_s = time.perf_counter() - start
    mark = time.perf_counter()
    import_library(args.peer)
    library_import_s = time.perf_counter() - mark
    mark = time.perf_counter()
    encode, info = open_peer(args.peer, args.base, threads=args.threads, max_length=args.max_length,
                             pooling=args.pooling, st_int8_file=args.st_int8_file,
                             bgeort_max_batch_tokens=args.bgeort_max_batch_tokens)
    open_s = time.perf_counter() - mark
    corpora = json.loads(args.corpora.read_text())
    reply(ok=True, ort_import_s=ort_import_s, library_import_s=library_import_s, open_s=open_s,
          rss_after_open=rss_bytes(), info=info, torch_loaded="torch" in sys.modules)

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        if op == "run":
            texts = corpora[command["corpus"]]
            mark = time.perf_counter()
            vectors = encode(texts)
            seconds = time.perf_counter() - mark
            reply(seconds=seconds, n=len(vectors), rss=rss_bytes(), peak_rss=peak_rss_bytes())
        elif op == "latency":
            queries = corpora["short"][: command["n"]]
            times = []
            for text in queries:
                mark = time.perf_counter()
                encode([text])
                times.append(time.perf_counter() - mark)
            reply(seconds=times)
        elif op == "vectors":
            vectors = encode(corpora[command["corpus"]][: command["n"]])
            reply(vectors=np.asarray(vectors, dtype=np.float64).round(6).tolist())
        elif op == "quality":
            reply(spearman=sts_spearman(encode))
        elif op == "rss":
            reply(rss=rss_bytes(), peak_rss=peak_rss_bytes())
        else:
            reply(error=f"unknown op {op!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
