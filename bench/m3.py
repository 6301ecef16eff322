"""bge-m3 on the CPU (issue 21): bgeort's M3Embedder, int8 and fp32, against FlagEmbedding's
BGEM3FlagModel (PyTorch fp32), in one run at the same thread count.

    bash bench/flagembedding_venv.sh     # once: FlagEmbedding's own venv (.venv-flagembedding)
    python bench/m3.py                   # `make bench-m3`: ~30 min on 2 cores -> results/m3.{md,json}
    python bench/m3.py --quick           # smoke run (2 x 128 model, few texts) -> results/tmp/quick/

The model: bge-m3's shape (XLM-RoBERTa 24 x 1024, 16 heads, FFN 4096, vocab 250,002, 8,194 positions)
with random weights (torch seed 0) and random sparse and ColBERT heads (seed 1); its tokenizer is an
XLM-R-style SentencePiece Unigram built here (trained on local English text, padded with pieces no
text matches to 250,002 ids), since no bge-m3 files can be fetched. One source folder feeds every
peer: bgeort exports it (`python -m export`, cached under results/tmp/m3/), FlagEmbedding loads it.

Measured: texts/s for dense only and for all three outputs on STS-B sentences and 512-token passages
(SciFact abstracts joined until they reach 512 tokens), interleaved rounds, each peer in its own
process; then peak RSS, each peer in a fresh process started by a small launcher that reads its
children's ru_maxrss, for one 8,192-token text and for 8 texts of 2,048 tokens. It measures and
reports; it never asserts. bench/README.md says how the numbers were read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpora import DATA, scifact_texts, stsb_pairs  # noqa: E402
from cpu import Worker, worker_env  # noqa: E402
from environment import describe_environment, save_results  # noqa: E402

SHAPES = {"full": dict(layers=24, hidden=1024, heads=16, ffn=4096),
          "quick": dict(layers=2, hidden=128, heads=2, ffn=512)}
VOCAB_SIZE, POSITIONS, MAX_LENGTH = 250_002, 8_194, 8_192
TRAINED_PIECES = 32_000  # the English part of the vocabulary; the rest is padding no text matches
# Counts sized so the full run takes ~25 minutes on 2 shared cores (a 512-token passage: 3-8 s in fp32).
SIZES = {"full": {"short": 48, "passage": 3, "rounds": 3},
         "quick": {"short": 32, "passage": 3, "rounds": 1}}
PASSAGE_TOKENS = 512
LONG = {"single-8192": (1, 8192), "batch-8x2048": (8, 2048)}
RSS_LAYERS = 2
# FlagEmbedding's batch sizes: its encode first runs its longest batch once more to probe the batch
# size, so big batches would double its work on small inputs; these keep that probe to one batch in n.
FE_BATCH = {"short": 32, "passage": 1}
PEERS = ("bgeort-int8", "bgeort-fp32", "flagembedding")
DESCRIPTIONS = {
    "bgeort-int8": "bgeort M3Embedder, int8 (default export: 7-bit weights, per-token activations)",
    "bgeort-fp32": "bgeort M3Embedder, fp32 (the exporter's graph that bgeort runs on CPU)",
    "flagembedding": "FlagEmbedding BGEM3FlagModel(use_fp16=False, devices='cpu'), PyTorch fp32",
}
PAUSE_S = 0.2
HEADS_REPEATS = 5  # dense-only / all-three pairs per bgeort peer for the heads' cost
FLAG_VENV = REPO / ".venv-flagembedding"


def log(message: str) -> None:
    print(f"[m3 {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the source folder

def training_texts() -> list[str]:
    """Local English text the tokenizer learns its pieces from (STS-B left out: it is measured)."""
    texts = scifact_texts()
    sick = (DATA / "sickr" / "SICK.txt").read_text(encoding="utf-8").splitlines()[1:]
    texts += [part for line in sick for part in line.split("\t")[1:3]]
    for folder in sorted((DATA / "sts12-16").glob("*")):
        for path in sorted(folder.glob("*input*")):
            texts += [part for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                      for part in line.split("\t")[:2]]
    return [text for text in texts if text.strip()]


def build_tokenizer():
    """XLM-R's layout: <s> <pad> </s> <unk>, the pieces, <mask> last (id 250,001); Metaspace pieces,
    NFKC, cased, <s> A </s>."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    trained = Tokenizer(models.Unigram())
    trained.normalizer = normalizer
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trained.train_from_iterator(training_texts(), trainers.UnigramTrainer(
        vocab_size=TRAINED_PIECES, special_tokens=specials, unk_token="<unk>", show_progress=False))
    pieces = [(piece, score) for piece, score in json.loads(trained.to_str())["model"]["vocab"]
              if piece not in specials]
    filler = VOCAB_SIZE - len(specials) - len(pieces) - 1
    # Private-use characters: in the vocabulary (and the embedding matrix) but never in a text.
    pieces += [(f"\U000f0000{i}", -100.0) for i in range(filler)]
    vocab = [(s, 0.0) for s in specials] + pieces + [("<mask>", 0.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tokenizer, len(pieces) - filler


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_tokenizer(folder: Path) -> dict:
    """The tokenizer files, saved by transformers' XLMRobertaTokenizerFast as bge-m3's are."""
    from transformers import XLMRobertaTokenizerFast

    backend, trained = build_tokenizer()
    XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                            cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                            model_max_length=MAX_LENGTH).save_pretrained(folder)
    facts = {"trained_pieces": trained}
    (folder / "facts.json").write_text(json.dumps(facts))
    return facts


def write_source(folder: Path, shape: dict, tokenizer: Path) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, folder / name)
    config = XLMRobertaConfig(vocab_size=VOCAB_SIZE, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                              num_attention_heads=shape["heads"], intermediate_size=shape["ffn"],
                              max_position_embeddings=POSITIONS, type_vocab_size=1, layer_norm_eps=1e-5,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    torch.manual_seed(1)
    torch.save(torch.nn.Linear(shape["hidden"], 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(shape["hidden"], shape["hidden"]).state_dict(), folder / "colbert_linear.pt")


def export(src: Path, out: Path, *extra: str) -> None:
    command = [sys.executable, "-m", "export", str(src), "--out", str(out.parent), "--name", out.name,
               "--family", "bge-m3", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, check=True, cwd=REPO, env=env)


def fingerprint(size: str) -> str:
    """What the folders are built from: the export's code and this file's builders (not its runs and
    report, so editing those keeps the exports, which take 10-40 minutes at full size)."""
    import hashlib
    import inspect

    digest = hashlib.sha256(json.dumps([size, SHAPES[size], VOCAB_SIZE, POSITIONS, TRAINED_PIECES, RSS_LAYERS]).encode())
    for path in sorted((REPO / "export").glob("*.py")) + [REPO / "bgeort" / "manifest.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for function in (training_texts, build_tokenizer, write_tokenizer, write_source, export, rss_shape, widen):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()


def rss_shape(size: str) -> dict:
    """The long-text RSS runs' model: bge-m3's width, heads, vocabulary and positions with RSS_LAYERS
    of its layers (one 8,192-token text through 24 layers takes minutes per peer on these cores; a
    layer's activations, the peak, do not depend on the depth; the other layers' weights are added
    from the full model's RSS after opening, see the report)."""
    return {**SHAPES[size], "layers": min(RSS_LAYERS, SHAPES[size]["layers"])}


def make_models(root: Path, size: str) -> Path:
    """tokenizer/ (shared), src/ (the source every peer reads) and bgeort/ (its export at max length
    512, fp32 and int8: the texts/s runs); src-rss/ (RSS_LAYERS deep) with bgeort-rss/ for the long
    texts. Each step is kept while what builds it is unchanged (a `.ready` file beside it)."""
    base = root / size
    base.mkdir(parents=True, exist_ok=True)
    stamp = fingerprint(size)
    tokenizer = root / "tokenizer"
    if not (tokenizer / "facts.json").is_file() or (tokenizer / "fingerprint").read_text() != tokenizer_fingerprint():
        log("tokenizer (Unigram trained on local text, padded to 250,002 ids)")
        shutil.rmtree(tokenizer, ignore_errors=True)
        tokenizer.mkdir(parents=True)
        write_tokenizer(tokenizer)
        (tokenizer / "fingerprint").write_text(tokenizer_fingerprint())
    shutil.copy(tokenizer / "facts.json", root / "src-facts.json")
    steps = [
        ("src", f"source folder ({size} shape {SHAPES[size]}, random weights)",
         lambda: write_source(base / "src", SHAPES[size], tokenizer)),
        ("bgeort", "bgeort export, max length 512 (fp32, int8)",
         lambda: export(base / "src", base / "bgeort", "--max-length", str(PASSAGE_TOKENS), "--precisions", "fp32,int8")),
        ("src-rss", f"source folder for the RSS runs ({rss_shape(size)})",
         lambda: write_source(base / "src-rss", rss_shape(size), tokenizer)),
        ("bgeort-rss-512", "its bgeort export, max length 512 (fp32, int8)",
         lambda: export(base / "src-rss", base / "bgeort-rss-512", "--max-length", str(PASSAGE_TOKENS),
                        "--precisions", "fp32,int8")),
        ("bgeort-rss", "the same folder opened up to 8,192 tokens", lambda: widen(base / "bgeort-rss-512",
                                                                                   base / "bgeort-rss")),
    ]
    for name, what, build in steps:
        ready = base / f"{name}.ready"
        if ready.is_file() and ready.read_text().strip() == stamp:
            continue
        ready.unlink(missing_ok=True)
        shutil.rmtree(base / name, ignore_errors=True)
        log(what)
        build()
        ready.write_text(stamp + "\n")
    return base


def widen(folder: Path, out: Path) -> None:
    """A copy of an export with its manifest's max length raised to the model's 8,192 tokens: the
    graphs are the same files (nothing in them depends on the max length). The bench takes this
    shortcut because an export at 8,192 checks its probes at that length, 8 runs of 2-3 minutes each
    on these cores; the RSS numbers are of these graphs either way (bench/README.md)."""
    shutil.copytree(folder, out)
    manifest = json.loads((out / "bgeort.json").read_text())
    manifest["max_length"] = MAX_LENGTH
    (out / "bgeort.json").write_text(json.dumps(manifest, indent=1))


def tokenizer_fingerprint() -> str:
    import hashlib
    import inspect

    return hashlib.sha256("".join(inspect.getsource(f) for f in (training_texts, build_tokenizer, write_tokenizer))
                          .encode() + str(TRAINED_PIECES).encode()).hexdigest()


# ---------------------------------------------------------------- texts

def build_texts(size: str, source: Path) -> dict[str, list[str]]:
    """short: STS-B sentences; passage: SciFact abstracts (seeded order) joined until each reaches
    512 tokens; the long texts for the RSS runs the same way at 8,192 and 2,048 tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    first, second, _ = stsb_pairs()
    short = list(dict.fromkeys(first + second))[: SIZES[size]["short"]]
    abstracts = scifact_texts()
    order = iter(np.random.default_rng(0).permutation(len(abstracts)).tolist())

    def joined(tokens: int) -> str:
        parts = []
        while len(tokenizer.encode(" ".join(parts)).ids) < tokens:
            parts.append(abstracts[next(order)])
        return " ".join(parts)

    texts = {"short": short, "passage": [joined(PASSAGE_TOKENS) for _ in range(SIZES[size]["passage"])]}
    for name, (count, tokens) in LONG.items():
        texts[name] = [joined(tokens) for _ in range(count)]
    return texts


def token_stats(texts: dict, source: Path) -> dict:
    """Token counts of every corpus by the bench tokenizer (before truncation) and, for scale, by
    all-MiniLM-L6-v2's WordPiece (English BERT)."""
    from tokenizers import Tokenizer

    from make_models import MINILM

    out = {}
    for name, path in (("bench", source / "tokenizer.json"), ("minilm_wordpiece", MINILM / "tokenizer.json")):
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        out[name] = {corpus: [len(e.ids) for e in tokenizer.encode_batch(items)] for corpus, items in texts.items()}
    return out


# ---------------------------------------------------------------- runs

def flag_python(args) -> str:
    return str(args.flag_python)


def worker_command(peer: str, folder: Path, args, *extra: str) -> list[str]:
    python = flag_python(args) if peer == "flagembedding" else sys.executable
    return [python, str(HERE / "m3_worker.py"), "--peer", peer, "--folder", str(folder), "--threads",
            str(args.threads), "--texts", str(args.texts_file), *extra]


def peer_folder(peer: str, base: Path, long: bool = False) -> Path:
    if peer == "flagembedding":
        return base / ("src-rss" if long else "src")
    return base / ("bgeort-rss" if long else "bgeort")


def measure_throughput(args, base: Path, texts: dict) -> dict:
    log(f"opening {', '.join(args.peer_list)} ({args.threads} threads each)")
    workers = [Worker(peer, "m3", args.threads, args, log_name=f"m3-{peer}.log",
                      command=worker_command(peer, peer_folder(peer, base), args)) for peer in args.peer_list]
    out = {w.peer: {"hello": w.hello, "runs": {}} for w in workers}
    settings = [(corpus, outputs) for corpus in ("short", "passage") for outputs in ("dense", "all")]
    try:
        for w in workers:  # warm-up, and outputs to check the peers against each other
            out[w.peer]["outputs"] = w.ask(op="outputs", corpus="short", n=8, max_length=PASSAGE_TOKENS,
                                           batch_size=FE_BATCH["short"])
            w.ask(op="run", corpus="passage", n=1, outputs="all", max_length=PASSAGE_TOKENS, batch_size=1)
        for r in range(args.rounds):
            order = workers[r % len(workers):] + workers[: r % len(workers)]
            for corpus, outputs in settings:
                for w in order:
                    time.sleep(PAUSE_S)
                    seconds = w.ask(op="run", corpus=corpus, outputs=outputs, max_length=PASSAGE_TOKENS,
                                    batch_size=FE_BATCH[corpus])["seconds"]
                    out[w.peer]["runs"].setdefault(f"{corpus}/{outputs}", []).append(seconds)
            log(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{w.peer} passage/all {statistics.median(out[w.peer]['runs']['passage/all']):.1f}s" for w in workers))
        for w in workers:  # what the heads cost a call: dense-only and all-three back to back, in each bgeort peer
            if w.peer.startswith("bgeort-"):
                out[w.peer]["alternate"] = {
                    corpus: w.ask(op="alternate", corpus=corpus, n=n, repeats=HEADS_REPEATS, max_length=PASSAGE_TOKENS,
                                  batch_size=FE_BATCH[corpus])["pairs"]
                    for corpus, n in (("short", None), ("passage", 1))}
    finally:
        for w in workers:
            w.close()
    return out


# The RSS children get at most this much address space, so a run that would need more fails alone
# instead of pushing the shared machine into swapless OOM.
RSS_CAP = 12 * 2**30
LAUNCHER = ("import json, resource, subprocess, sys\n"
            "cap = int(sys.argv.pop(1))\n"
            "limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True, preexec_fn=limit)\n"
            "print(json.dumps({'rc': rc.returncode, 'child': rc.stdout.strip(),\n"
            "                  'ru_maxrss_children': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n")


def measure_rss(args, base: Path) -> dict:
    """Each (peer, input) in a fresh process under a small launcher: the launcher's RUSAGE_CHILDREN
    ru_maxrss is that child's peak (the child's own VmHWM is recorded beside it)."""
    out = {}
    for name, (count, tokens) in LONG.items():
        for peer in args.rss_peer_list:
            command = worker_command(peer, peer_folder(peer, base, long=True), args, "--once", name,
                                     "--max-length", str(tokens), "--batch-size", str(count))
            log(f"peak RSS: {peer}, {name}")
            with open(args.log_dir / f"m3-rss-{peer}-{name}.log", "w") as stderr:
                done = subprocess.run([sys.executable, "-c", LAUNCHER, str(RSS_CAP), *command], stdout=subprocess.PIPE,
                                      stderr=stderr, text=True, env=worker_env(args.threads), cwd=REPO)
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            child = json.loads(answer["child"].splitlines()[-1]) if answer["rc"] == 0 and answer["child"] else {}
            out.setdefault(name, {})[peer] = {"rc": answer["rc"], "peak_rss": answer["ru_maxrss_children"], **child}
            log(f"  {peer} {name}: rc {answer['rc']}, peak {answer['ru_maxrss_children'] / 2**30:.2f} GiB, "
                f"{child.get('seconds', float('nan')):.1f} s")
    return out


# ---------------------------------------------------------------- report

def agreement(throughput: dict) -> dict:
    """Each peer's outputs on 8 sentences against FlagEmbedding's (same weights, same tokenizer)."""
    ref = throughput.get("flagembedding", {}).get("outputs")
    if not ref:
        return {}
    out = {}
    for peer, data in throughput.items():
        ours = data["outputs"]
        dense = np.abs(np.subtract(ours["dense"], ref["dense"])).max()
        colbert = max(float(np.abs(np.subtract(a, b)).max()) if np.shape(a) == np.shape(b) else float("inf")
                      for a, b in zip(ours["colbert"], ref["colbert"]))
        sparse = max(max((abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)), default=0.0)
                     for a, b in zip(ours["lexical"], ref["lexical"]))
        out[peer] = {"dense_max_abs_diff": float(dense), "colbert_max_abs_diff": colbert,
                     "sparse_max_abs_diff": float(sparse)}
    return out


def summarize(raw: dict) -> dict:
    counts = {corpus: len(raw["texts"][corpus]) for corpus in ("short", "passage")}
    rows = {}
    for peer, data in raw["throughput"].items():
        rows[peer] = {key: {"texts_per_s": counts[key.split("/")[0]] / statistics.median(seconds),
                            "best_texts_per_s": counts[key.split("/")[0]] / min(seconds),
                            "seconds": seconds} for key, seconds in data["runs"].items()}
    fe = rows.get("flagembedding")
    for peer, row in rows.items():
        for key, cell in row.items():
            if fe:
                cell["x_flagembedding"] = cell["texts_per_s"] / fe[key]["texts_per_s"]
                cell["x_flagembedding_best"] = cell["best_texts_per_s"] / fe[key]["best_texts_per_s"]
                # FlagEmbedding's encode runs its first (longest) batch twice (its batch-size probe)
                batches = -(-counts[key.split("/")[0]] // FE_BATCH[key.split("/")[0]])
                cell["x_flagembedding_probe_excluded"] = cell["x_flagembedding"] * batches / (batches + 1)
        for corpus in ("short", "passage"):
            row[f"{corpus}/heads_cost"] = row[f"{corpus}/dense"]["texts_per_s"] / row[f"{corpus}/all"]["texts_per_s"] - 1
            pairs = raw["throughput"][peer].get("alternate", {}).get(corpus)
            if pairs:  # all-three over dense-only seconds, pair by pair (back to back: the same machine state)
                row[f"{corpus}/heads_cost_paired"] = statistics.median(a / d for d, a in pairs) - 1
                row[f"{corpus}/heads_cost_best"] = min(a for _, a in pairs) / min(d for d, _ in pairs) - 1
    return {"throughput": rows, "agreement": agreement(raw["throughput"]), "rss": raw.get("rss", {})}


TARGETS = [("bgeort-int8", "short", 3.0), ("bgeort-int8", "passage", 2.0), ("bgeort-fp32", "short", 1.3),
           ("bgeort-fp32", "passage", 1.3)]


def write_markdown(summary: dict, raw: dict, path: Path) -> None:
    env = raw["environment"]
    shape = raw["shape"]
    tokens = raw["tokens"]
    lines = [
        "# bge-m3 CPU benchmark (issue 21): bgeort vs FlagEmbedding", "",
        f"Made by `{raw['command']}` on {raw['date']}, {raw['rounds']} interleaved round(s), wall "
        f"{raw['wall_seconds'] / 60:.1f} min. Texts/s are medians over rounds; each peer runs in its own process "
        f"with {raw['threads']} threads (onnxruntime intra-op threads for bgeort, torch.set_num_threads for "
        "FlagEmbedding, and OMP/MKL/OpenBLAS at the same count).", "",
        f"- CPU: {env['cpu_model']}, {env['cores_usable']} usable cores, {env['memory_gib']} GiB; flags: "
        f"{' '.join(env['cpu_flags'])}",
        "- Versions (bgeort side): " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- FlagEmbedding side ({raw['flag_python']}): " + ", ".join(f"{k} {v}" for k, v in raw["flag_versions"].items()),
        f"- Load average at start {raw['load_average_start']}, at end {raw['load_average_end']}",
        f"- Model: XLM-RoBERTa {shape['layers']} x {shape['hidden']}, {shape['heads']} heads, FFN {shape['ffn']}, "
        f"vocab {VOCAB_SIZE:,}, {POSITIONS:,} positions, random weights (torch seed 0), random sparse "
        f"({shape['hidden']} -> 1) and ColBERT ({shape['hidden']} -> {shape['hidden']}) heads (seed 1). Tokenizer: "
        f"an XLM-R-style SentencePiece Unigram trained here on local English text ({raw['trained_pieces']:,} "
        "pieces) padded to 250,002 ids with pieces no text matches.", "",
        "| texts | n | tokens: mean | p50 | max | all-MiniLM WordPiece mean (for scale) |", "|---|---:|---:|---:|---:|---:|",
    ]
    for corpus, lengths in tokens["bench"].items():
        lines.append(f"| {corpus} | {len(lengths)} | {np.mean(lengths):.0f} | {np.median(lengths):.0f} | {max(lengths)} | "
                     f"{np.mean(tokens['minilm_wordpiece'][corpus]):.0f} |")
    lines += ["", f"Passages are truncated at {PASSAGE_TOKENS} tokens by every peer (so each runs exactly "
              f"{PASSAGE_TOKENS}); the long texts at their own length.", "",
              "Peers: " + "; ".join(f"`{p}`: {DESCRIPTIONS[p]}" for p in raw["peers"]) + ". FlagEmbedding's "
              f"batch_size: {FE_BATCH['short']} for sentences, {FE_BATCH['passage']} for passages; bgeort's own "
              "batching (CPU: at most 128 padded tokens a batch).", "",
              "## Texts per second", "",
              "| peer | outputs | short texts/s | x FlagEmbedding | passages/s | x FlagEmbedding |",
              "|---|---|---:|---:|---:|---:|"]
    rows = summary["throughput"]
    for peer, row in rows.items():
        for outputs in ("dense", "all"):
            s, p = row[f"short/{outputs}"], row[f"passage/{outputs}"]
            lines.append(f"| {peer} | {'dense' if outputs == 'dense' else 'dense+sparse+ColBERT'} | "
                         f"{s['texts_per_s']:.1f} | {s.get('x_flagembedding', float('nan')):.2f}x | "
                         f"{p['texts_per_s']:.2f} | {p.get('x_flagembedding', float('nan')):.2f}x |")
    lines += ["", "The machine is shared and its speed moves between rounds; the same ratios from each peer's best "
              "round: " + "; ".join(f"{peer} short {row['short/dense']['x_flagembedding_best']:.2f}x / "
                                   f"{row['short/all']['x_flagembedding_best']:.2f}x, passages "
                                   f"{row['passage/dense']['x_flagembedding_best']:.2f}x / "
                                   f"{row['passage/all']['x_flagembedding_best']:.2f}x (dense / all)"
                                   for peer, row in rows.items()
                                   if "x_flagembedding_best" in row["short/dense"] and peer != "flagembedding") + ". Seconds per "
              "round are in m3.json.", "",
              "FlagEmbedding's `encode` runs its first (longest) batch once more before its loop, to find a "
              "batch size that fits; the ratios above include that, as a user's call does. With it taken out "
              "(its time scaled by batches / (batches + 1)), the ratios are:", "",
              "| peer | outputs | short | passages |", "|---|---|---:|---:|"]
    for peer, row in rows.items():
        if peer == "flagembedding":
            continue
        for outputs in ("dense", "all"):
            lines.append(f"| {peer} | {outputs} | {row[f'short/{outputs}'].get('x_flagembedding_probe_excluded', float('nan')):.2f}x | "
                         f"{row[f'passage/{outputs}'].get('x_flagembedding_probe_excluded', float('nan')):.2f}x |")
    lines += ["", "What the sparse and ColBERT outputs add to a call (dense-only texts/s over all-three texts/s, "
              "minus one): " + "; ".join(f"{peer} short {row['short/heads_cost']:+.1%}, passages "
                                         f"{row['passage/heads_cost']:+.1%}" for peer, row in rows.items()) + ". "
              f"Measured back to back instead ({HEADS_REPEATS} dense-only / all-three pairs in each bgeort worker "
              "after the rounds; the sentences, then one passage): all-three seconds over dense-only, median of the "
              "pairs (best over best): " + "; ".join(
                  f"{peer} sentences {row['short/heads_cost_paired']:+.1%} ({row['short/heads_cost_best']:+.1%}), "
                  f"passage {row['passage/heads_cost_paired']:+.1%} ({row['passage/heads_cost_best']:+.1%})"
                  for peer, row in rows.items() if "short/heads_cost_paired" in row) + ".", "",
              "### Targets", "", "| target | measured (as shipped / probe excluded) | met |", "|---|---:|---|"]
    for peer, corpus, bound in TARGETS:
        for outputs in ("dense", "all"):
            cell = rows.get(peer, {}).get(f"{corpus}/{outputs}", {})
            if "x_flagembedding" in cell:
                met = "yes" if cell["x_flagembedding"] >= bound else "**no**"
                lines.append(f"| {peer} {corpus} {outputs} >= {bound}x FlagEmbedding | {cell['x_flagembedding']:.2f}x / "
                             f"{cell['x_flagembedding_probe_excluded']:.2f}x | {met} |")
    if summary["agreement"]:
        lines += ["", "Outputs on 8 sentences against FlagEmbedding's (same weights and tokenizer): "
                  + "; ".join(f"{peer} dense max |diff| {a['dense_max_abs_diff']:.1e}, ColBERT {a['colbert_max_abs_diff']:.1e}, "
                              f"sparse {a['sparse_max_abs_diff']:.1e}" for peer, a in summary["agreement"].items()
                              if peer != "flagembedding") + "."]
    if summary["rss"]:
        lines += ["", "## Peak RSS", "",
                  f"The long texts run through a model of bge-m3's width with {raw['rss_shape']['layers']} of its "
                  f"{shape['layers']} layers (the same source code, seeds and tokenizer): a layer's activations, the "
                  "peak, do not grow with depth, while the time does (12 times these runs' at 24 layers). "
                  "bgeort's CPU graphs run a batch without padding (every long text here: each runs alone) "
                  "through mask-free MultiHeadAttention (export/attention.py). Each (peer, input) in a fresh process: the model opened, one `encode` "
                  "of the texts with all three outputs (FlagEmbedding: batch_size = the number of texts), then "
                  "exit. Peak = the launcher's RUSAGE_CHILDREN ru_maxrss (the child's own VmHWM beside it); a "
                  f"child is refused memory past {RSS_CAP / 2**30:.0f} GiB of address space (RLIMIT_AS), so a "
                  "failed row needs more than that. bgeort opens its export of that model at max length 512 with "
                  "the manifest's max length raised to 8,192 (the same graph files; bench/README.md). The last "
                  "column adds the other layers' weights: for bgeort, its full model's peak after opening (the "
                  "texts/s workers) minus this model's; FlagEmbedding pages its safetensors in as layers first "
                  "run, so its RSS after opening does not show them, and it gets bgeort fp32's difference (the "
                  "same float32 weights).", "",
                  "| input | peer | peak RSS GiB | VmHWM GiB | after open GiB | encode s | vs FlagEmbedding | "
                  f"est. at {shape['layers']} layers GiB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        extra = weights_beyond(raw)
        estimates = {}
        for name, peers in summary["rss"].items():
            fe = peers.get("flagembedding", {}).get("peak_rss")
            for peer, cell in peers.items():
                if cell.get("rc"):
                    lines.append(f"| {name} | {peer} | failed at the cap (exit {cell['rc']}; {cell['peak_rss'] / 2**30:.2f} "
                                 "resident then) | | | | | |")
                    continue
                estimate = cell["peak_rss"] + extra.get(peer, 0)
                estimates[(name, peer)] = estimate
                ratio = f"{cell['peak_rss'] / fe:.2f}" if fe else "–"
                lines.append(f"| {name} | {peer} | {cell['peak_rss'] / 2**30:.2f} | {cell.get('vm_hwm', 0) / 2**30:.2f} | "
                             f"{cell.get('vm_hwm_after_open', 0) / 2**30:.2f} | {cell.get('seconds', float('nan')):.1f} | "
                             f"{ratio} | {estimate / 2**30:.2f} |")
        lines += ["", "Targets: bgeort at most 1/3 of FlagEmbedding's peak, and at most 4 GB for one 8,192-token "
                  f"text in fp32 (measured at {raw['rss_shape']['layers']} layers / estimated at {shape['layers']}):"]
        for name, peers in summary["rss"].items():
            fe = peers.get("flagembedding", {}).get("peak_rss")
            for peer in ("bgeort-fp32", "bgeort-int8"):
                ours = peers.get(peer, {})
                if fe and ours.get("rc"):
                    lines.append(f"- {name}, {peer}: failed at the {RSS_CAP / 2**30:.0f} GiB address-space cap with "
                                 f"{ours['peak_rss'] / 2**30:.2f} GiB resident, already {ours['peak_rss'] / fe:.1f}x "
                                 "FlagEmbedding's peak (**missed**)"
                                 + ("; over 4 GB (**missed**)" if name == "single-8192" and peer == "bgeort-fp32" else ""))
                if not fe or ours.get("rc") or "peak_rss" not in ours:
                    continue
                full = estimates[(name, peer)] / estimates[(name, "flagembedding")]
                line = (f"- {name}, {peer}: {ours['peak_rss'] / fe:.2f} / {full:.2f} of FlagEmbedding's "
                        f"({'met' if ours['peak_rss'] <= fe / 3 else '**missed**'} / "
                        f"{'met' if full <= 1 / 3 else '**missed**'})")
                if name == "single-8192" and peer == "bgeort-fp32":
                    line += (f"; {ours['peak_rss'] / 1e9:.2f} / {estimates[(name, peer)] / 1e9:.2f} GB against 4 GB "
                             f"({'met' if ours['peak_rss'] <= 4e9 else '**missed**'} / "
                             f"{'met' if estimates[(name, peer)] <= 4e9 else '**missed**'})")
                lines.append(line)
    lines.append("")
    path.write_text("\n".join(lines))


def weights_beyond(raw: dict) -> dict:
    """Per peer, the RSS the full model's other layers add after opening (see write_markdown)."""
    opened = {peer: data["hello"].get("vm_hwm", 0) for peer, data in raw["throughput"].items()}
    extra = {}
    for peer in ("bgeort-int8", "bgeort-fp32"):
        cell = next((peers[peer] for peers in raw.get("rss", {}).values()
                     if peer in peers and "vm_hwm_after_open" in peers[peer]), None)
        if cell and peer in opened:
            extra[peer] = opened[peer] - cell["vm_hwm_after_open"]
    if "bgeort-fp32" in extra:
        extra["flagembedding"] = extra["bgeort-fp32"]
    return extra


def flag_versions(python: Path) -> dict:
    code = ("import json; from importlib import metadata as m; print(json.dumps({d: m.version(d) for d in "
            "('FlagEmbedding', 'torch', 'transformers', 'tokenizers', 'numpy')}))")
    try:
        return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                         check=True).stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        return {"error": str(exc)[:200]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS runs")
    parser.add_argument("--flag-python", type=Path, default=FLAG_VENV / "bin" / "python",
                        help="the FlagEmbedding venv's python (bash bench/flagembedding_venv.sh)")
    parser.add_argument("--models", type=Path, default=HERE / "results" / "tmp" / "m3")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results; quick: results/tmp/quick)")
    args = parser.parse_args(argv)
    size = "quick" if args.quick else "full"
    args.rounds = args.rounds or SIZES[size]["rounds"]
    args.out = args.out or (HERE / "results" / "tmp" / "quick" if args.quick else HERE / "results")
    args.peer_list = args.peers.split(",") if args.peers else list(PEERS)
    if "flagembedding" in args.peer_list and not args.flag_python.is_file():
        parser.error(f"{args.flag_python} not found: build FlagEmbedding's venv with bash bench/flagembedding_venv.sh "
                     "(or leave it out with --peers bgeort-int8,bgeort-fp32)")
    args.rss_peer_list = list(args.peer_list)
    args.isa = "native"
    args.log_dir = HERE / "results" / "tmp" / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), os.getloadavg()
    base = make_models(args.models, size)
    texts = build_texts(size, base / "src")
    args.texts_file = args.models / f"texts-{size}.json"
    args.texts_file.write_text(json.dumps(texts))
    raw = {"command": " ".join(["python", "bench/m3.py", *(sys.argv[1:] if argv is None else argv)]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds, "threads": args.threads,
           "peers": args.peer_list, "shape": SHAPES[size], "rss_shape": rss_shape(size), "texts": texts, "tokens": token_stats(texts, base / "src"),
           **json.loads((args.models / "src-facts.json").read_text()),
           "environment": describe_environment([args.threads]), "flag_python": str(args.flag_python),
           "flag_versions": flag_versions(args.flag_python), "load_average_start": load_start}
    raw["throughput"] = measure_throughput(args, base, texts)
    if not args.no_rss:
        raw["rss"] = measure_rss(args, base)
    raw["load_average_end"] = os.getloadavg()
    raw["wall_seconds"] = time.time() - started
    summary = summarize(raw)
    saved = {**raw, "texts": {corpus: items if corpus in ("short",) else [len(t) for t in items]
                              for corpus, items in texts.items()},  # long texts by length only
             # the vectors behind the agreement check stay out (megabytes): the summary holds its result
             "throughput": {peer: {k: v for k, v in data.items() if k != "outputs"}
                            for peer, data in raw["throughput"].items()}}
    report = save_results(args.out, "m3", summary, raw, write_markdown, stored=saved)
    log(f"done in {raw['wall_seconds'] / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
