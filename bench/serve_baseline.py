"""bench/serve.py's in-process baselines, in their own process (so the driver stays light):
`Embedder.encode` called once per request at one client (what `bgeort serve` at 1 client is held
to), and one big `encode` of every sentence the load sends (what 64 clients are held to).
Prints one JSON object on stdout.

    python bench/serve_baseline.py MODEL_DIR --requests FILE.json --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--requests", required=True, help="JSON {workload: [[texts of one request], ...]}")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-requests", type=int, default=200, help="per-request encodes per workload and round")
    args = parser.parse_args()
    import bgeort

    warnings.simplefilter("ignore", bgeort.TruncationWarning)
    model = bgeort.Embedder(args.model, device="cpu", threads=args.threads)
    requests = json.loads(open(args.requests).read())
    model.encode(requests["sentence"][0])  # warm-up
    out = {"precision": model.precision, "threads": args.threads, "per_request": {}, "one_call": {}}
    for workload, bodies in requests.items():
        latencies = []
        for _ in range(args.rounds):
            for texts in bodies[: args.max_requests]:
                mark = time.perf_counter()
                model.encode(texts)
                latencies.append(time.perf_counter() - mark)
        out["per_request"][workload] = {"latencies_s": latencies, "texts_per_request": len(bodies[0])}
    sentences = [text for texts in requests["sentence"] for text in texts]
    seconds = []
    for _ in range(args.rounds):
        mark = time.perf_counter()
        model.encode(sentences)
        seconds.append(time.perf_counter() - mark)
    out["one_call"] = {"texts": len(sentences), "seconds_all": seconds,
                       "texts_per_s": len(sentences) / statistics.median(seconds)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
