"""GPU check and benchmark (issue 6): bgeort fp16 on ONNX Runtime's CUDA provider vs PyTorch fp16.

The GPU machine has no optimum and cannot reach ../shared, so the work is split in two. Here:

    bash ../shared/gpu/prepare-ort-gpu.sh                       # onnxruntime-gpu 1.31.1 (CUDA 13) wheel
    make gpu-payload                                            # = prepare + pack below (~2 min)
    python bench/gpu.py prepare --payload /tmp/bgeort-gpu-payload   # exports, PyTorch fp32 references
    python bench/gpu.py pack --payload /tmp/bgeort-gpu-payload --wheel /tmp/ort-gpu-wheel/*.whl
                                                                # 374 MiB in 7 parts of 60 MiB: .gpu-parts/pN/

then on the GPU machine (the device tool), one call per part, `carry: [".gpu-parts/pN"]`, each
`mkdir -p /tmp/w && cp .gpu-parts/pN/* /tmp/w/` (~5 s each while the machine stays warm), and with the
last part:

    cat /tmp/w/payload.tar.* | tar -x -C /tmp && python3 -m pip install -q --no-index --no-deps \
      --target /tmp/site /tmp/payload/wheel/*.whl && export PYTHONPATH=/tmp/site:$PWD && \
      python3 bench/gpu.py run --payload /tmp/payload --out $OUT --rounds 5     # ~150 s

`prepare` exports a bge-small-shaped BERT with random weights (seeded), the real all-MiniLM-L6-v2 and
a small XLM-RoBERTa reranker, keeps their fp16 graphs (and the reranker's fp32), and computes the
PyTorch fp32 reference on this CPU: vectors for probe texts, MiniLM's STS-B test vectors and
Spearman, the reranker's logits. It also stores the corpora: STS-B sentences (short, ~15 tokens),
SciFact abstracts (RAG chunks, ~325 tokens) and texts past 512 tokens.

`run`, on the GPU:
  1. in a fresh process that never imports torch (which would load the CUDA libraries for
     onnxruntime and hide a missing one): `bgeort doctor`, device='cuda'/'auto'/'cuda:N' opening,
     fp16-on-CUDA parity against the PyTorch fp32 references (cosine >= 0.999, MiniLM STS-B within
     0.2 points of fp32), the reranker on CUDA;
  2. times bgeort CUDA fp16 against PyTorch fp16 (SDPA attention, the same architecture, CLS
     pooling, FlagEmbedding's loop: length-sorted batches of 256, and of 1,024) on the same texts,
     interleaved rounds after a warm-up pass, medians; bgeort's default, without its pipelining and
     with 256-text batches; the time bgeort spends tokenizing and inside onnxruntime; and fixed-shape
     runs of the bare graph;
and writes gpu.json and gpu.md under --out. Measures only; never asserts.
`run --device cpu --quick` is the dry run on a CPU (no timing meaning, ~3 min).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
EMBEDDERS = ("bge-small-en-v1.5", "all-MiniLM-L6-v2")
RERANKER = "xlmr-reranker-small"
PART_BYTES = 60 * 2**20
TARGETS = {"short": 2.5, "chunks": 1.5, "512": None}


# ---------------------------------------------------------------- prepare (here, with torch/optimum)

def long_texts(chunks: list[str], n: int) -> list[str]:
    return [" ".join(text.split() * 8) for text in chunks[:n]]  # every one past 512 tokens


def prepare(payload: Path, quick: bool) -> None:
    import torch  # noqa: F401  (the references)

    from bench.eval.data import load_sts
    from bench.eval.metrics import paired_cosine, sts_spearman
    from export import export_model
    from export.verify import probe_pairs, probe_texts, torch_reference, torch_reranker_reference
    from tests.conftest import make_bert_source, make_classifier_source

    payload.mkdir(parents=True, exist_ok=True)
    work = payload.parent / (payload.name + "-work")
    minilm = SHARED / "models" / "all-MiniLM-L6-v2"
    sources = {
        "bge-small-en-v1.5": make_bert_source(work / "sources" / "bge-small-en-v1.5", layers=12, hidden=384, heads=12,
                                              ffn=1536, positions=512, tokenizer_from=minilm),
        "all-MiniLM-L6-v2": minilm,
        RERANKER: make_classifier_source(work / "sources" / RERANKER, model_type="xlm-roberta", layers=4, hidden=256,
                                         heads=4, ffn=1024, positions=512, max_length=512),
    }
    keep = {"bge-small-en-v1.5": ("fp16",), "all-MiniLM-L6-v2": ("fp16",), RERANKER: ("fp32", "fp16")}
    for name, source in sources.items():
        folder = export_model(str(source), out=work / "models", precisions=("fp32", "fp16"))
        target = payload / "models" / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        manifest = json.loads((folder / "bgeort.json").read_text())
        for file in ["bgeort.json", manifest["tokenizer_file"]] + [manifest["variants"][p]["file"] for p in keep[name]]:
            shutil.copy2(folder / file, target / file)
    # PyTorch's side of the timing needs the architecture and tokenizer, not the weights
    torch_source = payload / "sources" / "bge-small-en-v1.5"
    shutil.rmtree(torch_source, ignore_errors=True)
    torch_source.mkdir(parents=True)
    for file in sources["bge-small-en-v1.5"].iterdir():
        if file.is_file() and not file.name.endswith((".safetensors", ".bin")):
            shutil.copy2(file, torch_source / file.name)

    stsb = load_sts("STSBenchmark", data=SHARED / "data", limit=100 if quick else None)
    chunks = []
    with gzip.open(SHARED / "data" / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as stream:
        for line in stream:
            doc = json.loads(line)
            chunks.append((doc.get("title", "") + " " + doc["text"]).strip())
    corpora = {"short": stsb.sentences1 + stsb.sentences2 if quick else _stsb_train_and_test(),
               "chunks": chunks[:64 if quick else 2048]}
    probes = {name: probe_texts(512 if name == "bge-small-en-v1.5" else 256) + corpora["short"][:200]
              + chunks[:48] for name in EMBEDDERS}
    references = {}
    for name in EMBEDDERS:
        pooling = "cls" if name == "bge-small-en-v1.5" else "mean"
        max_length = 512 if name == "bge-small-en-v1.5" else 256
        references[f"{name}/probe"] = torch_reference(sources[name], probes[name], pooling=pooling, normalize=True,
                                                      max_length=max_length).vectors
    a = torch_reference(minilm, stsb.sentences1, pooling="mean", normalize=True, max_length=256).vectors
    b = torch_reference(minilm, stsb.sentences2, pooling="mean", normalize=True, max_length=256).vectors
    pairs = probe_pairs(512)
    references[f"{RERANKER}/logits"] = torch_reranker_reference(sources[RERANKER], pairs, max_length=512).vectors
    np.savez(payload / "references.npz", **{key.replace("/", "__"): value for key, value in references.items()})
    info = {
        "probes": probes,
        "stsb": {"sentences1": stsb.sentences1, "sentences2": stsb.sentences2, "gold": stsb.gold.tolist(),
                 "torch_fp32_spearman": 100 * sts_spearman(stsb.gold, paired_cosine(a, b)),
                 "published": 82.03247283076371},
        "reranker_pairs": pairs,
        "prepared_with": {"torch": __import__("torch").__version__, "quick": quick},
    }
    (payload / "info.json").write_text(json.dumps(info))
    with gzip.open(payload / "corpora.json.gz", "wt", encoding="utf-8") as stream:
        json.dump(corpora, stream)
    print(f"payload ready in {payload}: " + ", ".join(f"{p.relative_to(payload)} {p.stat().st_size / 2**20:.1f} MiB"
                                                     for p in sorted(payload.rglob("*")) if p.is_file()))


def _stsb_train_and_test() -> list[str]:
    import csv

    texts = []
    for split in ("dev", "test"):
        with open(SHARED / "data" / "stsb" / f"stsb-en-{split}.csv", newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        texts += [r[0] for r in rows] + [r[1] for r in rows]
    return texts


def pack(payload: Path, parts: Path, wheels: list[Path]) -> None:
    """The payload (and the onnxruntime-gpu wheel, under payload/wheel/) as one tar split into
    PART_BYTES parts, each in parts/pN/ (one carried per call)."""
    if wheels:
        shutil.rmtree(payload / "wheel", ignore_errors=True)
        (payload / "wheel").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, payload / "wheel" / wheel.name)
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    blob = parts / "payload.tar"
    with tarfile.open(blob, "w") as tar:
        tar.add(payload, arcname="payload")
    data = blob.read_bytes()
    blob.unlink()
    for n, start in enumerate(range(0, len(data), PART_BYTES)):
        (parts / f"p{n}").mkdir()
        (parts / f"p{n}" / f"payload.tar.{n:02d}").write_bytes(data[start:start + PART_BYTES])
    print(f"{len(data) / 2**20:.1f} MiB in {n + 1} parts under {parts}")


# ---------------------------------------------------------------- run, step 1: no torch in this process

def check(payload: Path, device: str) -> dict:
    import bgeort

    warnings.simplefilter("ignore", bgeort.TruncationWarning)
    info = json.loads((payload / "info.json").read_text())
    refs = np.load(payload / "references.npz")
    out = {"torch_imported": "torch" in sys.modules}
    models = payload / "models"

    def attempt(key, fn):
        try:
            out[key] = fn()
        except Exception as exc:  # noqa: BLE001 - every check reports, the others still run
            out[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}

    def opened(name, **options):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = (bgeort.Reranker if name == RERANKER else bgeort.Embedder)(models / name, **options)
        return model, {"device": model.device, "precision": model.precision,
                       "open_s": round(time.perf_counter() - start, 3),
                       "warnings": [str(w.message) for w in caught if not issubclass(w.category, bgeort.TruncationWarning)]}

    def embedder_parity(name):
        model, entry = opened(name, device=device, precision="fp16")
        vectors = model.encode(info["probes"][name])
        cosine = (vectors.astype(np.float64) * refs[f"{name}__probe"]).sum(axis=1)
        entry.update(min_cosine=float(cosine.min()), mean_cosine=float(cosine.mean()), ok=bool(cosine.min() >= 0.999),
                     probes=len(cosine))
        if name == "all-MiniLM-L6-v2":
            from bench.eval.metrics import paired_cosine, sts_spearman

            stsb = info["stsb"]
            a, b = model.encode(stsb["sentences1"]), model.encode(stsb["sentences2"])
            score = 100 * sts_spearman(np.asarray(stsb["gold"]), paired_cosine(a, b))
            entry["stsb"] = {"bgeort_fp16": score, "torch_fp32": stsb["torch_fp32_spearman"],
                             "published": stsb["published"], "pairs": len(stsb["gold"]),
                             "within_0.2": bool(abs(score - stsb["torch_fp32_spearman"]) <= 0.2)}
        return entry

    def reranker_parity():
        from export.verify import spearman

        pairs = [tuple(p) for p in info["reranker_pairs"]]
        reference = refs[f"{RERANKER}__logits"].reshape(-1)
        result = {}
        for precision in ("fp32", "fp16"):
            model, entry = opened(RERANKER, device=device, precision=precision)
            scores = np.asarray(model.compute_score(pairs), dtype=np.float64).reshape(-1)
            entry.update(max_abs_diff=float(np.abs(scores - reference).max()),
                         spearman=spearman(scores, reference), pairs=len(pairs))
            result[precision] = entry
        return result

    for name in EMBEDDERS:
        attempt(name, lambda: embedder_parity(name))
    attempt(RERANKER, reranker_parity)
    attempt("auto", lambda: opened("bge-small-en-v1.5", device="auto")[1])
    attempt("cuda:7", lambda: opened("bge-small-en-v1.5", device="cuda:7")[1])  # a GPU that is not there
    out["torch_imported_after"] = "torch" in sys.modules
    return out


# ---------------------------------------------------------------- run, step 2: timing against PyTorch

class TorchEncoder:
    """FlagEmbedding's encode loop: length-sorted batches, padded per batch, CLS, L2-normalized."""

    def __init__(self, source: Path, device: str, dtype, batch_size: int):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.torch, self.device, self.batch_size = torch, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(source))
        config = AutoConfig.from_pretrained(str(source))
        torch.manual_seed(0)  # the timing needs the architecture; the weights are random either way
        self.model = AutoModel.from_config(config, attn_implementation="sdpa").to(device=device, dtype=dtype).eval()

    def __call__(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=512,
                                       return_tensors="pt").to(self.device)
                cls = self.model(**batch).last_hidden_state[:, 0].float()
                out[idx] = torch.nn.functional.normalize(cls, dim=-1).cpu().numpy()
        return out


def tokens_of(texts, tokenizer) -> int:
    return int(np.minimum(tokenizer.count_tokens(texts), 512).sum())


def timing(payload: Path, device: str, rounds: int, quick: bool, budget_s: float) -> dict:
    import torch

    import bgeort
    from bgeort import model as model_module

    warnings.simplefilter("ignore", bgeort.TruncationWarning)
    began = time.perf_counter()
    with gzip.open(payload / "corpora.json.gz", "rt", encoding="utf-8") as stream:
        corpora = json.load(stream)
    corpora["512"] = long_texts(corpora["chunks"], 1024)
    if quick:  # the dry run: a few texts of each
        corpora = {name: texts[:16] for name, texts in corpora.items()}
    else:  # passes long enough to time on a GPU: ~23k short texts, 4k chunks, 2k long texts
        corpora = {name: texts * {"short": 4, "chunks": 2, "512": 2}[name] for name, texts in corpora.items()}
    cuda = device.startswith("cuda")
    half = torch.float16 if cuda else torch.float32
    torch_device = "cuda" if cuda else "cpu"
    folder = payload / "models" / "bge-small-en-v1.5"
    ours = {"bgeort (default)": bgeort.Embedder(folder, device=device, precision="fp16"),
            "bgeort not pipelined": bgeort.Embedder(folder, device=device, precision="fp16"),
            "bgeort b256": bgeort.Embedder(folder, device=device, precision="fp16", batch_size=256)}
    ours["bgeort not pipelined"]._model.pipelined = False  # tokenize everything, then run
    theirs = {f"torch fp16 b{size}": TorchEncoder(payload / "sources" / "bge-small-en-v1.5", torch_device, half, size)
              for size in (256, 1024)}
    default = ours["bgeort not pipelined"]  # for the split of its time
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if cuda else None, "corpora": {}}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for corpus, texts in corpora.items():
        entry = {"texts": len(texts), "tokens": tokens_of(texts, default._model.tokenizer), "runs": {}}
        runners = {**ours, **theirs}
        for name, fn in runners.items():  # warm-up, a whole pass: CUDA context, kernels, plans for every shape
            (fn.encode if name.startswith("bgeort") else fn)(texts)
        sync()
        times = {name: [] for name in runners}
        for _ in range(rounds):  # interleaved: A B C ... A B C ...
            for name, fn in runners.items():
                start = time.perf_counter()
                (fn.encode if name.startswith("bgeort") else fn)(texts)
                sync()
                times[name].append(time.perf_counter() - start)
            if time.perf_counter() - began > budget_s:
                entry["cut_short"] = True
                break
        for name, seconds in times.items():
            median = statistics.median(seconds)
            entry["runs"][name] = {"texts_per_s": len(texts) / median, "tokens_per_s": entry["tokens"] / median,
                                   "best_texts_per_s": len(texts) / min(seconds), "seconds": seconds}
        best_ours = max((n for n in ours), key=lambda n: entry["runs"][n]["texts_per_s"])
        best_theirs = max((n for n in theirs), key=lambda n: entry["runs"][n]["texts_per_s"])
        entry["ratio_default_vs_torch_b256"] = (entry["runs"]["bgeort (default)"]["texts_per_s"]
                                                / entry["runs"]["torch fp16 b256"]["texts_per_s"])
        entry["ratio_best"] = {"ours": best_ours, "theirs": best_theirs,
                               "ratio": entry["runs"][best_ours]["texts_per_s"] / entry["runs"][best_theirs]["texts_per_s"]}
        # where bgeort's time goes: tokenizing, inside onnxruntime's runs, the rest (padding, copies)
        spent = {"run": 0.0}
        real_run_bound = model_module.run_bound

        def timed_run_bound(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_run_bound(*args, **kwargs)
            finally:
                spent["run"] += time.perf_counter() - start

        model_module.run_bound = timed_run_bound
        try:
            start = time.perf_counter()
            default.encode(texts)
            total = time.perf_counter() - start
        finally:
            model_module.run_bound = real_run_bound
        start = time.perf_counter()
        default._model.tokenizer.encode(texts, max_length=default.max_length)
        entry["bgeort_default_split_s"] = {"total": total, "tokenize": time.perf_counter() - start,
                                           "onnxruntime_runs": spent["run"]}
        result["corpora"][corpus] = entry
        print(f"timed {corpus}: " + ", ".join(f"{n} {r['texts_per_s']:.0f}/s" for n, r in entry["runs"].items()),
              flush=True)
    result["fixed_shapes"] = fixed_shapes(folder, device, quick)
    return result


def fixed_shapes(folder: Path, device: str, quick: bool) -> dict:
    """The bare fp16 graph on random token ids of fixed shapes, IOBinding, inputs already on the device."""
    from bgeort.model import OpenModel

    model = OpenModel.open(folder, kind="embedder", precision="fp16", device=device, threads=None)
    session = model.session
    kind, _, index = model.device.partition(":")
    ort = __import__("onnxruntime")
    out = {}
    for rows, length in ((256, 32), (64, 344), (32, 512)):
        rng = np.random.default_rng(0)
        feed = {"input_ids": rng.integers(1000, 30000, (rows, length), dtype=np.int64),
                "attention_mask": np.ones((rows, length), dtype=np.int64),
                "token_type_ids": np.zeros((rows, length), dtype=np.int64)}
        binding = session.io_binding()
        for name in model.input_names:
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(feed[name], kind, int(index or 0)))
        binding.bind_output(model.output_name, kind, int(index or 0))
        for _ in range(3):
            session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        reps = 2 if quick else 20
        start = time.perf_counter()
        for _ in range(reps):
            session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        seconds = (time.perf_counter() - start) / reps
        out[f"{rows}x{length}"] = {"sequences_per_s": rows / seconds, "ms_per_batch": 1000 * seconds}
    return out


# ---------------------------------------------------------------- report

def report(results: dict) -> str:
    lines = [f"# bgeort on {results.get('timing', {}).get('gpu') or results['device']}", "",
             f"{results['when']}; onnxruntime {results.get('onnxruntime')}, torch {results.get('timing', {}).get('torch')}, "
             f"bge-small shape (12 x 384, random weights), fp16; medians of {results['rounds']} interleaved rounds; "
             "texts/s include tokenization and the copy back of the vectors for both.", ""]
    timing = results.get("timing", {})
    if "corpora" in timing:
        names = list(next(iter(timing["corpora"].values()))["runs"])
        lines += ["| corpus | texts | tokens | " + " | ".join(names) + " | default / torch b256 | best / best | target |",
                  "| --- " * (len(names) + 6) + "|"]
        for corpus, entry in timing["corpora"].items():
            target = TARGETS[corpus]
            best = entry["ratio_best"]
            verdict = "" if target is None else f"≥ {target}×: {'met' if best['ratio'] >= target else 'missed'}"
            lines.append(f"| {corpus} | {entry['texts']} | {entry['tokens']} | "
                         + " | ".join(f"{entry['runs'][n]['texts_per_s']:,.0f}" for n in names)
                         + f" | {entry['ratio_default_vs_torch_b256']:.2f}× | {best['ratio']:.2f}× | {verdict} |")
        lines += ["", "Where bgeort's time goes without the pipelining (one pass, s): "
                  + "; ".join(f"{c}: total {e['bgeort_default_split_s']['total']:.3f}, tokenize "
                              f"{e['bgeort_default_split_s']['tokenize']:.3f}, onnxruntime runs "
                              f"{e['bgeort_default_split_s']['onnxruntime_runs']:.3f}" for c, e in timing["corpora"].items())]
    if "fixed_shapes" in timing:
        lines += ["", "Bare fp16 graph, fixed shapes, IOBinding (sequences/s): "
                  + ", ".join(f"{shape} {row['sequences_per_s']:,.0f}" for shape, row in timing["fixed_shapes"].items())]
    checks = results.get("check", {})
    lines += ["", "## Parity and opening (a process without torch)", ""]
    for key, entry in checks.items():
        if isinstance(entry, dict) and "error" in entry:
            lines.append(f"- {key}: ERROR {entry['error']}")
        elif key in EMBEDDERS:
            line = (f"- {key}: {entry['precision']} on {entry['device']}, min cosine to PyTorch fp32 "
                    f"{entry['min_cosine']:.6f} over {entry['probes']} texts ({'ok' if entry['ok'] else 'BELOW 0.999'})")
            if "stsb" in entry:
                s = entry["stsb"]
                line += (f"; STS-B {s['bgeort_fp16']:.4f} vs PyTorch fp32 {s['torch_fp32']:.4f} "
                         f"({'within' if s['within_0.2'] else 'NOT within'} 0.2; published {s['published']:.2f})")
            lines.append(line)
        elif key == RERANKER:
            lines.append(f"- {key}: " + "; ".join(f"{p} on {e['device']} max |logit diff| {e['max_abs_diff']:.2e}, "
                                                  f"Spearman {e['spearman']:.6f}" for p, e in entry.items()))
        elif isinstance(entry, dict):
            lines.append(f"- device={key!r}: {entry['precision']} on {entry['device']}, opened in {entry['open_s']} s"
                         + (f", warned: {entry['warnings']}" if entry["warnings"] else ""))
    if "doctor" in results:
        lines += ["", "## bgeort doctor", "", "```", results["doctor"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    results = {"device": args.device, "rounds": args.rounds, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    model = args.payload / "models" / "bge-small-en-v1.5"
    try:
        doctor = subprocess.run([sys.executable, "-m", "bgeort", "doctor", str(model)], capture_output=True, text=True,
                                env=env, timeout=120)
        results["doctor"] = doctor.stdout + doctor.stderr[-2000:]
    except Exception as exc:  # noqa: BLE001
        results["doctor"] = f"failed: {exc}"
    try:
        child = subprocess.run([sys.executable, __file__, "check", "--payload", str(args.payload), "--device", args.device,
                                "--out", str(args.out)], capture_output=True, text=True, env=env, timeout=300)
        results["check_stderr"] = child.stderr[-3000:]
        results["check"] = json.loads((args.out / "check.json").read_text())
    except Exception as exc:  # noqa: BLE001
        results["check"] = {"run": {"error": f"{type(exc).__name__}: {exc}"}}
    print(json.dumps(results["check"], indent=1)[:6000], flush=True)
    try:
        import onnxruntime

        results["onnxruntime"] = onnxruntime.__version__
        results["timing"] = timing(args.payload, args.device, args.rounds, args.quick, args.budget)
    except Exception as exc:  # noqa: BLE001
        results["timing_error"] = traceback.format_exc()
        print(results["timing_error"], flush=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    (args.out / "gpu.md").write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("prepare", "pack", "check", "run"))
    parser.add_argument("--payload", type=Path, default=Path("/tmp/bgeort-gpu-payload"))
    parser.add_argument("--parts", type=Path, default=ROOT / ".gpu-parts")
    parser.add_argument("--wheel", type=Path, action="append", default=[], help="pack: a wheel to carry (onnxruntime-gpu)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of timing before rounds are cut short")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.payload, args.quick)
    elif args.step == "pack":
        pack(args.payload, args.parts, args.wheel)
    elif args.step == "check":
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check.json").write_text(json.dumps(check(args.payload, args.device), indent=1))
    else:
        return run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
