"""One bge-m3 peer of bench/m3.py in its own process: bgeort's M3Embedder (this repository's venv) or
FlagEmbedding's BGEM3FlagModel (its own venv, bench/flagembedding_venv.sh). Imports nothing of
bench/ or bgeort at module level, so it runs in either venv.

Driven like worker.py: a hello line, then one JSON answer per JSON command on stdin. `--once` runs
one encode of the texts in a JSON file and exits (bench/m3.py's peak-RSS runs, each in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PEERS = ("bgeort-int8", "bgeort-fp32", "flagembedding")
OUTPUTS = {"dense": dict(return_dense=True, return_sparse=False, return_colbert_vecs=False),
           "all": dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)}


def peak_rss_bytes() -> int:
    """VmHWM: this process image's own peak (reset at exec)."""
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def open_peer(peer: str, folder: Path, threads: int):
    """encode(texts, outputs, max_length, batch_size) -> FlagEmbedding-shaped dict, and facts to report."""
    if peer.startswith("bgeort-"):
        import bgeort

        model = bgeort.M3Embedder(folder, precision=peer.split("-", 1)[1], device="cpu", threads=threads)

        def encode(texts, outputs, max_length, batch_size):
            return model.encode(texts, max_length=max_length, **OUTPUTS[outputs])
        return encode, {"precision": model.precision, "bgeort": bgeort.__version__ if hasattr(bgeort, "__version__")
                        else None}
    import torch
    from FlagEmbedding import BGEM3FlagModel

    torch.set_num_threads(threads)
    model = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu")

    def encode(texts, outputs, max_length, batch_size):
        return model.encode(texts, batch_size=batch_size, max_length=max_length, **OUTPUTS[outputs])
    return encode, {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "attn_implementation": getattr(model.model.model.config, "_attn_implementation", None)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", choices=PEERS, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="JSON: {corpus: [texts]}")
    parser.add_argument("--once", help="corpus to encode once (all outputs), then report and exit")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="FlagEmbedding's batch_size in --once")
    args = parser.parse_args()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to stderr

    def reply(**message):
        protocol.write(json.dumps(message) + "\n")

    mark = time.perf_counter()
    encode, info = open_peer(args.peer, args.folder, args.threads)
    texts = json.loads(args.texts.read_text())
    if args.once:
        opened_peak = peak_rss_bytes()
        mark = time.perf_counter()
        encode(texts[args.once], "all", args.max_length, args.batch_size)
        reply(seconds=time.perf_counter() - mark, vm_hwm=peak_rss_bytes(), vm_hwm_after_open=opened_peak, info=info)
        return 0
    reply(open_s=time.perf_counter() - mark, info=info, vm_hwm=peak_rss_bytes())
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        chosen = texts[command["corpus"]][: command.get("n")]
        if command["op"] == "run":
            mark = time.perf_counter()
            encode(chosen, command["outputs"], command["max_length"], command["batch_size"])
            reply(seconds=time.perf_counter() - mark)
        elif command["op"] == "alternate":  # dense-only and all-three calls back to back, repeated
            pairs = []
            for _ in range(command["repeats"]):
                seconds = []
                for outputs in ("dense", "all"):
                    mark = time.perf_counter()
                    encode(chosen, outputs, command["max_length"], command["batch_size"])
                    seconds.append(time.perf_counter() - mark)
                pairs.append(seconds)
            reply(pairs=pairs)
        elif command["op"] == "outputs":  # for the agreement check between peers
            out = encode(chosen, "all", command["max_length"], command["batch_size"])
            reply(dense=np.asarray(out["dense_vecs"], np.float64).tolist(),
                  lexical=[{str(k): float(v) for k, v in weights.items()} for weights in out["lexical_weights"]],
                  colbert=[np.asarray(v, np.float64).tolist() for v in out["colbert_vecs"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
