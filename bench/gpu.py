"""GPU check and benchmark (issue 6): bgeort fp16 on ONNX Runtime's CUDA provider vs PyTorch fp16.

One prepared script for a lent GPU machine (see ../shared/gpu/README.md for getting onnxruntime-gpu
there). It
  1. builds a bge-small-shaped BERT with random weights (seeded) and exports it, and exports the real
     all-MiniLM-L6-v2 (or takes already exported folders with --models);
  2. checks fp16-on-CUDA parity against PyTorch fp32 (cosine >= 0.999) and MiniLM's STS-B Spearman
     within 0.2 points of fp32;
  3. times bgeort CUDA fp16 against PyTorch fp16 (SDPA attention) on the same texts, interleaved,
     on short texts (~30 tokens), RAG chunks (~340 tokens) and 512-token inputs;
and writes gpu.json and gpu.md to --out. `--device cpu --quick` runs the same logic on a CPU as a
dry run (no timing meaning). Measures only; never asserts.

    PYTHONPATH=$PWD python bench/gpu.py --out "$OUT"

On the lent machine: onnxruntime-gpu travels in parts as ../shared/gpu/README.md says; the export
stage needs optimum, optimum-onnx and onnx there too (pure-Python wheels, carried beside it, per the
device tool's README), and ../shared must be copied into the repository (it does not travel).
Dry run here (CPU, meaningless timings, ~7 min): bench/gpu.py --device cpu --quick --rounds 1.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def load_corpora(data: Path, quick: bool) -> dict[str, list[str]]:
    with open(data / "stsb" / "stsb-en-test.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    short = [r[0] for r in rows] + [r[1] for r in rows]
    chunks = []
    with gzip.open(data / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as stream:
        for line in stream:
            doc = json.loads(line)
            chunks.append((doc.get("title", "") + " " + doc["text"]).strip())
    long_512 = [" ".join(text.split() * 8) for text in chunks[:2048]]  # every one past 512 tokens
    n = 64 if quick else None
    return {"short": short[:n or 2758], "chunks": chunks[:n or 2048], "512": long_512[:n or 1024]}


def make_bge_small_shaped(folder: Path) -> Path:
    from tests.conftest import make_bert_source

    minilm = SHARED / "models" / "all-MiniLM-L6-v2"
    return make_bert_source(folder, layers=12, hidden=384, heads=12, ffn=1536, positions=512, tokenizer_from=minilm)


def torch_vectors(source: Path, texts, *, pooling: str, max_length: int, device: str, dtype, batch_size: int = 64):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModel.from_pretrained(str(source), attn_implementation="sdpa").to(device=device, dtype=dtype).eval()
    order = np.argsort([len(t) for t in texts])
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            if pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(vectors, dim=1).cpu().numpy()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out


def stsb_spearman(encode, data: Path, limit: int | None = None) -> float:
    from scipy.stats import spearmanr

    with open(data / "stsb" / "stsb-en-test.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[:limit]
    a = encode([r[0] for r in rows]).astype(np.float64)
    b = encode([r[1] for r in rows]).astype(np.float64)
    cosine = 1 - 0.5 * np.sum((a - b) ** 2, axis=1)
    return 100 * spearmanr([float(r[2]) for r in rows], cosine)[0]


def timed(fn, texts) -> float:
    start = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bgeort-gpu"))
    parser.add_argument("--models", type=Path, help="folder with already exported bge-small-en-v1.5 and all-MiniLM-L6-v2")
    parser.add_argument("--data", type=Path, default=SHARED / "data")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    import torch

    import bgeort

    warnings.simplefilter("ignore", bgeort.TruncationWarning)
    torch_device = "cuda" if args.device.startswith("cuda") else "cpu"
    results = {"device": args.device, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    models = args.models
    if models is None:
        from export import export_model

        models = args.work / "models"
        source = make_bge_small_shaped(args.work / "sources" / "bge-small-en-v1.5")
        export_model(str(source), out=models, precisions=("fp32", "fp16"))
        export_model(str(SHARED / "models" / "all-MiniLM-L6-v2"), out=models, precisions=("fp32", "fp16"))
    corpora = load_corpora(args.data, args.quick)
    import onnxruntime

    results["onnxruntime"] = onnxruntime.__version__
    for name in ("bge-small-en-v1.5", "all-MiniLM-L6-v2"):
        folder = models / name
        model = bgeort.Embedder(folder, precision="fp16", device=args.device)
        manifest = model.manifest
        source = Path(manifest.provenance["source"])
        entry = {"precision": model.precision, "device": model.device}
        probe = corpora["short"][:256] + corpora["chunks"][:64]
        reference = torch_vectors(source, probe, pooling=manifest.pooling, max_length=manifest.max_length,
                                  device=torch_device, dtype=torch.float32)
        cosine = (model.encode(probe) * reference).sum(axis=1)
        entry["parity_min_cosine"] = float(cosine.min())
        entry["parity_ok"] = bool(cosine.min() >= 0.999)
        if name == "all-MiniLM-L6-v2":
            limit = 200 if args.quick else None
            fp16_score = stsb_spearman(model.encode, args.data, limit)
            fp32_score = stsb_spearman(lambda t: torch_vectors(source, t, pooling="mean", max_length=256,
                                                               device=torch_device, dtype=torch.float32),
                                       args.data, limit)
            entry["stsb"] = {"bgeort_fp16": fp16_score, "torch_fp32": fp32_score,
                             "within_0.2": bool(abs(fp16_score - fp32_score) <= 0.2)}
        if name == "bge-small-en-v1.5":
            half = torch.float16 if torch_device == "cuda" else torch.float32
            speed = {}
            for corpus, texts in corpora.items():
                ours, theirs = [], []
                model.encode(texts[:64])  # warm-up: CUDA context, cuDNN/cuBLAS plans
                torch_vectors(source, texts[:64], pooling="cls", max_length=512, device=torch_device, dtype=half)
                for _ in range(args.rounds):  # interleaved A B A B
                    ours.append(timed(model.encode, texts))
                    theirs.append(timed(lambda t: torch_vectors(source, t, pooling="cls", max_length=512,
                                                                device=torch_device, dtype=half, batch_size=256),
                                        texts))
                speed[corpus] = {"texts": len(texts), "bgeort_fp16_texts_per_s": statistics.median(ours),
                                 "torch_fp16_texts_per_s": statistics.median(theirs),
                                 "ratio": statistics.median(ours) / statistics.median(theirs)}
            entry["speed"] = speed
        results[name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    lines = [f"# bgeort on {results['gpu'] or args.device}", "",
             f"onnxruntime {results['onnxruntime']}, torch {results['torch']}, rounds {args.rounds} (medians)", "",
             "| corpus | texts | bgeort CUDA fp16 texts/s | PyTorch fp16 SDPA texts/s | ratio | target |",
             "| --- | --- | --- | --- | --- | --- |"]
    targets = {"short": 2.5, "chunks": 1.5, "512": None}
    for corpus, row in results["bge-small-en-v1.5"].get("speed", {}).items():
        target = targets[corpus]
        met = "" if target is None else (f"≥ {target}× {'met' if row['ratio'] >= target else 'missed'}")
        lines.append(f"| {corpus} | {row['texts']} | {row['bgeort_fp16_texts_per_s']:.0f} | "
                     f"{row['torch_fp16_texts_per_s']:.0f} | {row['ratio']:.2f} | {met} |")
    for name in ("bge-small-en-v1.5", "all-MiniLM-L6-v2"):
        entry = results[name]
        lines.append(f"\n{name}: fp16 vs PyTorch fp32 min cosine {entry['parity_min_cosine']:.6f} "
                     f"({'ok' if entry['parity_ok'] else 'BELOW 0.999'})")
    stsb = results["all-MiniLM-L6-v2"]["stsb"]
    lines.append(f"MiniLM STS-B: bgeort fp16 {stsb['bgeort_fp16']:.4f}, PyTorch fp32 {stsb['torch_fp32']:.4f} "
                 f"({'within' if stsb['within_0.2'] else 'NOT within'} 0.2)")
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
