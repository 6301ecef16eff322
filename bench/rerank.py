"""The reranker part of issue 4's benchmark: bgeort's Reranker against sentence-transformers'
CrossEncoder (PyTorch fp32, the reference users start from) on a bge-reranker-base-shaped model,
interleaved in one session, at 1 and 2 threads.

    python bench/rerank.py              # `make bench-rerank`: ~10 minutes on 2 cores
    python bench/rerank.py --quick      # smoke run: fewer pairs, 1 round, 1 thread; to bench/results/tmp/quick

The model: XLM-RoBERTa of bge-reranker-base's exact shape (12 x 768, 12 heads, FFN 3072, vocab 250002,
514 positions, one logit), random weights (torch seed 0). No XLM-R SentencePiece model is on this
machine, so its tokenizer is all-MiniLM-L6-v2's uncased WordPiece in XLM-R's pair layout
(<s> A </s></s> B </s>): both peers tokenize with it, so the work is equal; English token counts are
close to XLM-R's. Scores are meaningless; what is compared is time, and that every peer computes the
same logits (max |diff| against CrossEncoder, Spearman of bgeort int8 against its fp32).

Pairs of real text: `short` = STS-B test sentence pairs (~25 tokens per pair), `rag` = SciFact claims
with abstracts (query + ~330-token passage, truncated at 512). Writes rerank.json and rerank.md to
--out. It measures and reports; it never asserts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpora import DATA, stsb_pairs  # noqa: E402
from cpu import Worker  # noqa: E402
from environment import describe_environment, save_results  # noqa: E402
from isa import ISAS, MaskUnavailable, mark_environment, probe  # noqa: E402
from make_models import DEFAULT_ROOT, MINILM, build_fingerprint, export_bgeort  # noqa: E402
from report import isa_lines  # noqa: E402

PEERS = ("bgeort-int8", "bgeort-fp32", "ce-torch")
DESCRIPTIONS = {
    "bgeort-int8": "bgeort Reranker, int8 (default export, per-token activations)",
    "bgeort-fp32": "bgeort Reranker, fp32 (the plain graph bgeort runs on CPU)",
    "ce-torch": "sentence-transformers CrossEncoder, PyTorch fp32, batch_size 32",
}
SIZES = {"full": {"short": 256, "rag": 32}, "quick": {"short": 64, "rag": 8}}
MAX_LENGTH = 512
PAUSE_S = 0.2


def log(message: str) -> None:
    print(f"[rerank {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_pairs(size: str) -> dict[str, list[list[str]]]:
    counts = SIZES[size]
    first, second, _ = stsb_pairs()
    short = [[a, b] for a, b in zip(first, second)][: counts["short"]]
    with gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as stream:
        docs = {str(d["_id"]): (d["title"] + " " + d["text"]).strip() for d in map(json.loads, stream)}
    claims = [json.loads(line) for line in open(DATA / "scifact" / "queries.jsonl", encoding="utf-8")]
    rng = np.random.default_rng(0)
    ids = sorted(docs)
    rag = [[claims[int(i)]["text"], docs[ids[int(j)]]]
           for i, j in zip(rng.choice(len(claims), counts["rag"], replace=False),
                           rng.choice(len(ids), counts["rag"], replace=False))]
    return {"short": short, "rag": rag}


def write_source(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, processors
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    backend = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    backend.no_padding()
    backend.no_truncation()
    backend.post_processor = processors.RobertaProcessing(sep=("[SEP]", backend.token_to_id("[SEP]")),
                                                          cls=("[CLS]", backend.token_to_id("[CLS]")))
    fast = XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]",
                                   cls_token="[CLS]", unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
                                   model_max_length=MAX_LENGTH)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                              layer_norm_eps=1e-5, num_labels=1, pad_token_id=backend.token_to_id("[PAD]"),
                              bos_token_id=backend.token_to_id("[CLS]"), eos_token_id=backend.token_to_id("[SEP]"))
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)


def make_model(root: Path) -> Path:
    base = root / "reranker-base"
    stamp = base / "ready"
    if stamp.is_file() and stamp.read_text().strip() == build_fingerprint():
        return base
    if base.exists():
        shutil.rmtree(base)
    log("source folder (bge-reranker-base shape, random weights)")
    write_source(base / "src")
    log("bgeort export")
    export_bgeort(base / "src", base / "bgeort", None)
    stamp.write_text(build_fingerprint() + "\n")
    return base


# ---------------------------------------------------------------- worker (one peer per process)

def open_peer(peer: str, base: Path, threads: int):
    if peer.startswith("bgeort-"):
        import bgeort

        model = bgeort.Reranker(base / "bgeort", precision=peer.split("-", 1)[1], threads=threads)
        # (this model's positions allow 513 tokens: its pad id is 0, not XLM-R's 1; every peer stops at 512)
        return lambda pairs: model.compute_score(pairs, max_length=MAX_LENGTH), {"precision": model.precision}
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    model = CrossEncoder(str(base / "src"), max_length=MAX_LENGTH, device="cpu", activation_fn=torch.nn.Identity())
    return lambda pairs: model.predict(pairs, batch_size=32, show_progress_bar=False), {"torch": torch.__version__}


def worker(args) -> int:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    mark = time.perf_counter()
    score, info = open_peer(args.worker, args.models / "reranker-base", args.threads)
    protocol.write(json.dumps({"open_s": time.perf_counter() - mark, "info": info}) + "\n")
    pairs = json.loads(args.pairs.read_text())
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        chosen = [tuple(p) for p in pairs[command["corpus"]]]
        if command["op"] == "run":
            mark = time.perf_counter()
            score(chosen)
            protocol.write(json.dumps({"seconds": time.perf_counter() - mark}) + "\n")
        elif command["op"] == "scores":
            protocol.write(json.dumps({"scores": np.asarray(score(chosen), np.float64).ravel().tolist()}) + "\n")
        elif command["op"] == "latency":
            times = []
            for pair in chosen[: command["n"]]:
                mark = time.perf_counter()
                score([pair])
                times.append(time.perf_counter() - mark)
            protocol.write(json.dumps({"seconds": times}) + "\n")
    return 0


def measure(threads: int, args, pairs: dict) -> dict:
    log(f"{threads} thread(s): opening {', '.join(args.peer_list)}")
    workers = [Worker(peer, "reranker-base", threads, args, log_name=f"rerank-{peer}-t{threads}.log",
                      command=[sys.executable, str(Path(__file__).resolve()), "--worker", peer, "--threads",
                               str(threads), "--models", str(args.models), "--pairs", str(args.pairs)])
               for peer in args.peer_list]
    out = {w.peer: {"hello": w.hello, "runs": {c: [] for c in pairs}, "latency": []} for w in workers}
    try:
        for w in workers:  # warm-up, and the scores every peer must agree on
            out[w.peer]["scores"] = {c: w.ask(op="scores", corpus=c)["scores"] for c in pairs}
        for r in range(args.rounds):
            order = workers[r % len(workers):] + workers[: r % len(workers)]
            for corpus in pairs:
                for w in order:
                    time.sleep(PAUSE_S)
                    out[w.peer]["runs"][corpus].append(w.ask(op="run", corpus=corpus)["seconds"])
            for w in order:
                time.sleep(PAUSE_S)
                out[w.peer]["latency"] += w.ask(op="latency", corpus="short", n=args.latency_pairs)["seconds"]
            log(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{w.peer} rag {statistics.median(out[w.peer]['runs']['rag']):.2f}s" for w in workers))
    finally:
        for w in workers:
            w.close()
    return out


def pair_tokens(pairs: dict, models: Path) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models / "reranker-base" / "bgeort" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    return {c: [len(e.ids) for e in tokenizer.encode_batch([tuple(p) for p in ps])] for c, ps in pairs.items()}


def summarize(raw: dict) -> dict:
    from scipy.stats import spearmanr

    out = {}
    for threads, peers in raw["runs"].items():
        rows = {}
        reference = peers.get("ce-torch", {}).get("scores")
        fp32 = peers.get("bgeort-fp32", {}).get("scores")
        for peer, data in peers.items():
            row = {"open_s": data["hello"]["open_s"],
                   "latency_ms_p50": 1e3 * statistics.median(data["latency"]),
                   "latency_ms_p95": 1e3 * float(np.percentile(data["latency"], 95))}
            for corpus, seconds in data["runs"].items():
                n, tokens = len(raw["pairs"][corpus]), sum(raw["tokens"][corpus])
                median = statistics.median(seconds)
                row[corpus] = {"pairs_per_s": n / median, "tokens_per_s": tokens / median, "seconds": seconds}
            if reference:
                row["max_abs_diff_vs_ce_torch"] = max(
                    float(np.abs(np.subtract(data["scores"][c], reference[c])).max()) for c in reference)
            if fp32:
                row["spearman_vs_bgeort_fp32"] = min(
                    float(spearmanr(data["scores"][c], fp32[c]).statistic) for c in fp32)
            rows[peer] = row
        base = rows.get("ce-torch")
        for row in rows.values():
            if base:
                for corpus in raw["pairs"]:
                    row[corpus]["x_ce_torch"] = row[corpus]["pairs_per_s"] / base[corpus]["pairs_per_s"]
        out[threads] = rows
    return out


def write_markdown(summary: dict, raw: dict, path: Path) -> None:
    env = raw["environment"]
    lines = [
        "# bgeort reranker CPU benchmark (issue 4)" + ("" if env.get("isa", "native") == "native" else
                                                       f", {env['isa'].upper()} instruction set"), "",
        f"Made by `{raw['command']}` on {raw['date']}, {raw['rounds']} interleaved round(s), wall "
        f"{raw['wall_seconds'] / 60:.1f} min. Pairs/s are medians over rounds; each peer runs in its own "
        "process with the same thread budget.", "",
        f"- CPU: {env['cpu_model']}, {env['cores_usable']} usable cores, {env['memory_gib']} GiB; flags: {' '.join(env['cpu_flags'])}",
        *isa_lines(env),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- Per worker: {env['env_set_per_worker']}",
        f"- Load average at start {raw['load_average_start']}, at end {raw['load_average_end']}",
        "- Model: bge-reranker-base's shape (XLM-RoBERTa, 12 x 768, 12 heads, FFN 3072, vocab 250002), random "
        "weights; all-MiniLM-L6-v2's uncased WordPiece in XLM-R's pair layout as every peer's tokenizer "
        f"(no XLM-R SentencePiece model here); max length {MAX_LENGTH} for every peer.", "",
        "| pairs | n | tokens per pair: mean | p50 | max |", "|---|---:|---:|---:|---:|",
    ]
    for corpus, lengths in raw["tokens"].items():
        lines.append(f"| {corpus} | {len(lengths)} | {np.mean(lengths):.0f} | {np.median(lengths):.0f} | {max(lengths)} |")
    lines += ["", "Peers: " + "; ".join(f"`{p}`: {DESCRIPTIONS[p]}" for p in raw["peers"]), ""]
    for threads, rows in summary.items():
        lines += [f"## {threads} thread(s)", "",
                  "| peer | short pairs/s | x CE | RAG pairs/s | x CE | RAG tok/s | single pair p50 / p95 ms | open s | "
                  "max abs logit diff vs CE | Spearman vs bgeort fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for peer, row in rows.items():
            lines.append(
                f"| {peer} | {row['short']['pairs_per_s']:.1f} | {row['short'].get('x_ce_torch', float('nan')):.2f}x | "
                f"{row['rag']['pairs_per_s']:.2f} | {row['rag'].get('x_ce_torch', float('nan')):.2f}x | "
                f"{row['rag']['tokens_per_s']:.0f} | {row['latency_ms_p50']:.1f} / {row['latency_ms_p95']:.1f} | "
                f"{row['open_s']:.2f} | {row.get('max_abs_diff_vs_ce_torch', float('nan')):.2e} | "
                f"{row.get('spearman_vs_bgeort_fp32', float('nan')):.4f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", help="comma-separated (default 1,2; quick 1)")
    parser.add_argument("--latency-pairs", type=int, default=20)
    parser.add_argument("--models", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, help="results folder (default bench/results, with --isa avx2 "
                        "bench/results/avx2, quick bench/results/tmp/quick)")
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="run every peer with cpuid hiding AVX-512, VNNI and AMX (bench/isa.py); default native")
    parser.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        return worker(args)
    size = "quick" if args.quick else "full"
    args.rounds = args.rounds or (1 if args.quick else 3)
    thread_counts = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    args.out = args.out or (HERE / "results" / "tmp" / "quick" if args.quick else
                            HERE / "results" / ("" if args.isa == "native" else args.isa))
    try:
        isa_probe = None if args.isa == "native" else probe(args.isa)
    except MaskUnavailable as exc:
        parser.error(f"--isa {args.isa}: {exc}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_dir = HERE / "results" / "tmp" / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    args.peer_list = list(PEERS)
    started, load_start = time.time(), os.getloadavg()
    make_model(args.models)
    pairs = build_pairs(size)
    args.pairs = HERE / "results" / "tmp" / f"rerank-pairs-{size}.json"
    args.pairs.write_text(json.dumps(pairs))
    raw = {"command": " ".join(["python", "bench/rerank.py", *(sys.argv[1:] if argv is None else argv)]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
           "peers": args.peer_list, "pairs": pairs, "tokens": pair_tokens(pairs, args.models),
           "environment": mark_environment(describe_environment(thread_counts), args.isa, isa_probe),
           "load_average_start": load_start}
    raw["runs"] = {str(t): measure(t, args, pairs) for t in thread_counts}
    raw["load_average_end"] = os.getloadavg()
    raw["wall_seconds"] = time.time() - started
    summary = summarize(raw)
    report = save_results(args.out, "rerank", summary, raw, write_markdown)
    log(f"done in {raw['wall_seconds'] / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
