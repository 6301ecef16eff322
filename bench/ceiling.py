"""How fast could any int8 graph on onnxruntime embed short texts here? The integer GEMMs alone.

bge-small's weight GEMMs are fixed work per token (12 layers of Q/K/V 384x1152, output 384x384, FFN
384x1536 and 1536x384). This measures onnxruntime's MatMulIntegerToFloat, the operator bgeort's
int8 graph runs them with (uint8 activations at zero point 128, signed 7-bit weights, 128 token
rows: bgeort's CPU batch), at those shapes, on this CPU's own kernels and under bench/isa.py's AVX2
mask, and turns the rates into a ceiling: texts/s if nothing but these GEMMs cost time (no
attention, LayerNorm, GELU, quantization, tokenizing). A target above the ceiling cannot be met by
any graph of onnxruntime's operators; the gap below it is what the rest of the graph costs.

    python bench/ceiling.py        # -> results/int8-ceiling.{md,json} (~1 min)

Next to the ceiling it lists the short-text figures of the CPU benchmark runs committed in
results/cpu.json and results/avx2/cpu.json (other runs, minutes to hours apart: compare loosely).
Reports; never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from isa import MaskUnavailable, environ  # noqa: E402

LAYERS = 12
SHAPES = {"Q/K/V": (384, 1152), "attention output": (384, 384), "FFN up": (384, 1536), "FFN down": (1536, 384)}
ROWS = 128  # bgeort's CPU token budget per batch (bgeort/batching.py)
MAC_PER_TOKEN = LAYERS * sum(k * n for k, n in SHAPES.values())  # 21.2 M multiply-adds: 42.5 MFLOP
TARGETS = {"st-torch": 5.0, "st-onnx-int8": 3.0, "fastembed": 5.0}  # issue 4, short texts, 2 threads

CHILD = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
threads, rows, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
shapes = json.loads(sys.argv[4])
rng = np.random.default_rng(0)
out = {}
for name, (k, n) in shapes.items():
    inits = [numpy_helper.from_array(rng.integers(-63, 64, (k, n)).astype(np.int8), "w"),
             numpy_helper.from_array(np.array(0.01, np.float32), "a_scale"),
             numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zero"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (rows, k)).astype(np.uint8)}
    session.run(None, feed)
    best, spent, reps = float("inf"), 0.0, 0
    while spent < seconds or reps < 20:
        start = time.perf_counter()
        session.run(None, feed)
        elapsed = time.perf_counter() - start
        best, spent, reps = min(best, elapsed), spent + elapsed, reps + 1
    out[name] = 2 * rows * k * n / best / 1e9
print(json.dumps(out))
"""


def measure(isa: str, threads: int, seconds: float) -> dict:
    """GOP/s of MatMulIntegerToFloat per shape, best run, in a child process under `isa`."""
    shapes = json.dumps(SHAPES)
    done = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(ROWS), str(seconds), shapes],
                          env={**environ(isa), "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the GEMM child under {isa} failed: {done.stderr[-1000:]}")
    return json.loads(done.stdout)


def ceiling_tokens_per_s(gops: dict) -> float:
    seconds_per_token = sum(LAYERS * 2 * k * n / (gops[name] * 1e9) for name, (k, n) in SHAPES.items())
    return 1.0 / seconds_per_token


def committed_short_figures(isa: str) -> dict | None:
    """Short-text texts/s at 2 threads and mean real tokens from a committed CPU benchmark run."""
    path = HERE / "results" / ("cpu.json" if isa == "native" else f"{isa}/cpu.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    per = data["summary"]["per_threads"].get("2")
    if per is None:
        return None
    lengths = data["raw"]["token_lengths"]["short"]
    return {"file": str(path.relative_to(HERE.parent)), "made": data["raw"].get("command"),
            "mean_tokens": sum(lengths) / len(lengths),
            "texts_per_s": {peer: v["corpora"]["short"]["texts_per_s"] for peer, v in per["peers"].items()
                            if "short" in v.get("corpora", {})}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per shape (default 2)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    rows = []
    for isa in ("native", "avx2"):
        try:
            environ(isa)
        except MaskUnavailable as exc:
            print(f"[ceiling] {isa}: skipped ({exc})", file=sys.stderr)
            continue
        committed = committed_short_figures(isa)
        for threads in (1, 2):
            gops = measure(isa, threads, args.seconds)
            tokens = ceiling_tokens_per_s(gops)
            row = {"isa": isa, "threads": threads, "gops": gops, "ceiling_tokens_per_s": tokens}
            if committed and threads == 2:
                row["committed"] = committed
                row["ceiling_short_texts_per_s"] = tokens / committed["mean_tokens"]
            rows.append(row)
            print(f"[ceiling] {isa} {threads} thread(s): {tokens:,.0f} tokens/s", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (args.out / "int8-ceiling.json").write_text(json.dumps({"made": when, "rows_per_batch": ROWS,
                                                           "mac_per_token": MAC_PER_TOKEN, "rows": rows}, indent=1))
    (args.out / "int8-ceiling.md").write_text(markdown(rows, when))
    print(args.out / "int8-ceiling.md")
    return 0


def markdown(rows: list, when: str) -> str:
    lines = ["# The int8 GEMM ceiling for short texts (issue 4)", "",
             f"Made by `python bench/ceiling.py` on {when}. onnxruntime's MatMulIntegerToFloat (what bgeort's int8 "
             f"graph runs its weight GEMMs with: uint8 activations, signed 7-bit weights) on {ROWS} token rows at "
             f"bge-small's shapes, best run; the ceiling is tokens/s if these {2 * MAC_PER_TOKEN / 1e6:.1f} MFLOP "
             "per token were all a run cost. `avx2`: under bench/isa.py's mask (the issue's CPU class).", "",
             "| instruction set | threads | " + " | ".join(f"{name} GOP/s" for name in SHAPES) + " | ceiling tokens/s |",
             "|---|---:|" + "---:|" * (len(SHAPES) + 1)]
    for row in rows:
        lines.append(f"| {row['isa']} | {row['threads']} | " + " | ".join(f"{row['gops'][n]:.0f}" for n in SHAPES)
                     + f" | {row['ceiling_tokens_per_s']:,.0f} |")
    lines += ["", "Short texts (STS-B sentences) at 2 threads: the ceiling against the committed benchmark runs "
              "(measured at other times on a noisy VM; the ceiling is a bound, not a forecast):", "",
              "| instruction set | mean tokens | ceiling texts/s | bgeort-int8 | bgeort-int8-static | "
              + " | ".join(f"{peer} x {factor:g} (target)" for peer, factor in TARGETS.items()) + " | run |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(TARGETS) + "---|"]
    for row in rows:
        committed = row.get("committed")
        if not committed:
            continue
        seen = committed["texts_per_s"]
        cells = []
        for peer, factor in TARGETS.items():
            if peer in seen:
                need = seen[peer] * factor
                cells.append(f"{need:,.0f} ({'above' if need > row['ceiling_short_texts_per_s'] else 'below'} the ceiling)")
            else:
                cells.append("–")
        lines.append(f"| {row['isa']} | {committed['mean_tokens']:.1f} | {row['ceiling_short_texts_per_s']:,.0f} | "
                     f"{seen.get('bgeort-int8', float('nan')):,.0f} | {seen.get('bgeort-int8-static', float('nan')):,.0f} | "
                     + " | ".join(cells) + f" | `{committed['file']}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
