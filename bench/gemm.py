"""This machine's fp32 GEMM rate with numpy's BLAS at a fixed thread count: the yardstick for
"achieved GFLOP/s". Run by cpu.py in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset
(they pin an older, slower kernel on some CPUs here), and prints one JSON object.

Shapes: the bge-small layer GEMMs at 2048 tokens (384x384, 384x1536, 1536x384) and large squares.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SHAPES = {  # name -> (M, K, N)
    "tokens2048 x 384x384 (QKV/out proj)": (2048, 384, 384),
    "tokens2048 x 384x1536 (FFN up)": (2048, 384, 1536),
    "tokens2048 x 1536x384 (FFN down)": (2048, 1536, 384),
    "square 2048": (2048, 2048, 2048),
    "square 3072": (3072, 3072, 3072),
}


def rate(m: int, k: int, n: int, *, min_seconds: float) -> float:
    """Best GFLOP/s of repeated (m, k) @ (k, n) fp32 matmuls into a preallocated output."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    spent = 0.0
    reps = 0
    while spent < min_seconds or reps < 3:
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        spent += elapsed
        reps += 1
    return 2.0 * m * k * n / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args()
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=args.threads, user_api="blas"):
        rates = {name: rate(*shape, min_seconds=args.min_seconds) for name, shape in SHAPES.items()}
        info = [{key: pool.get(key) for key in ("internal_api", "version", "architecture", "num_threads",
                                                "threading_layer")} for pool in threadpool_info()]
    print(json.dumps({"threads": args.threads, "gflops": rates, "peak_gflops": max(rates.values()),
                      "blas": info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
