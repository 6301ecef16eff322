"""Interleaved A/B of ONNX graphs on one of the bench corpora: the tool behind the per-change speedups
quoted in export/ and bgeort/ comments ("best of 15 interleaved runs per batch").

    python bench/ab.py MODEL_FOLDER FILE_A FILE_B [...] [--corpus short|rag|mix] [--threads 1] [--reps 15]
    python bench/ab.py models/x models/x/model_int8.onnx other.onnx@keep-bias-gelu

Each corpus batch (planned as bgeort plans it) runs once per file in turn, `--reps` times; the
figure per file is the sum over batches of each batch's fastest run, and one short query's fastest
run. On a shared, noisy machine the fastest of many interleaved runs moves by ~1%, where medians of
whole passes move by 10-20%. Sessions are opened as bgeort opens them on CPU; a file named with
`@keep-bias-gelu` keeps onnxruntime's BiasGelu fusion (what bgeort leaves out). Reports; never asserts.
Needs the corpora file `make bench` writes (bench/results/tmp/corpora-full.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bgeort.batching import batch_defaults, plan_batches  # noqa: E402
from bgeort.session import CPU_DISABLED_FUSIONS, session_options  # noqa: E402
from bgeort.tokenization import TextTokenizer  # noqa: E402

CORPORA = HERE / "results" / "tmp" / "corpora-full.json"
QUERY = "what is the capital of france?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a bgeort model folder (its tokenizer.json is used)")
    parser.add_argument("files", nargs="+", help="ONNX graphs to compare; the first is the baseline")
    parser.add_argument("--corpus", default="short", help="short, rag or mix (default short)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    if not CORPORA.is_file():
        parser.error(f"{CORPORA} is missing: run `make bench` (or `python bench/cpu.py --quick`) once first")
    import onnxruntime as ort

    texts = json.loads(CORPORA.read_text())[args.corpus]
    tokenizer = TextTokenizer(args.folder / "tokenizer.json", max_length=512)
    encoded = tokenizer.encode(texts)
    batch_size, max_tokens = batch_defaults("cpu")
    sessions = []
    for spec in args.files:
        path, _, flag = spec.partition("@")
        disabled = [] if flag == "keep-bias-gelu" else list(CPU_DISABLED_FUSIONS)
        options = session_options(ort, threads=args.threads, spinning=True, exact_int8=False)
        sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=disabled))
    names = [i.name for i in sessions[0].get_inputs()]
    feeds = [{n: a[n] for n in names} for a in (tokenizer.pad(encoded, b) for b in
                                                 plan_batches(encoded.lengths, batch_size=batch_size,
                                                              max_tokens=max_tokens))]
    query = tokenizer.encode([QUERY])
    feeds.append({n: a[n] for n in names for a in [tokenizer.pad(query, np.array([0]))]})
    best = np.full((len(sessions), len(feeds)), np.inf)
    for session in sessions:
        for feed in feeds:
            session.run(None, feed)
    for _ in range(args.reps):
        for j, feed in enumerate(feeds):
            for i, session in enumerate(sessions):
                start = time.perf_counter()
                session.run(None, feed)
                best[i, j] = min(best[i, j], time.perf_counter() - start)
    corpus = best[:, :-1].sum(axis=1)
    print(f"{args.corpus}: {len(texts)} texts, {len(feeds) - 1} batches, {args.threads} thread(s), best of {args.reps}")
    for i, spec in enumerate(args.files):
        print(f"{spec:48s} corpus {corpus[i] * 1e3:8.1f} ms ({corpus[0] / corpus[i]:.3f}x)   "
              f"query {best[i, -1] * 1e3:.2f} ms ({best[0, -1] / best[i, -1]:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
