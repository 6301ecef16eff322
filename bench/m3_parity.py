"""How far bge-m3's int8 and fp16 variants land from the PyTorch reference on real weights and real
text: the measurement behind export/m3.py's THRESHOLDS (docs/m3.md, "Parity bars").

No bge-m3 weights can be fetched here, so the backbone is the real all-MiniLM-L6-v2 (BERT, 6 x 384)
from ../shared/models with seeded random sparse (384 -> 1) and ColBERT (384 -> 384) heads beside it:
the export's M3 path takes any BERT or XLM-R encoder once both head files are there. Random heads
are a limitation: a trained sparse head spreads its weights differently, which moves the top-10 id
agreement. The export's own probe numbers (bgeort.json) are reported next to the real-text ones.

    python bench/m3_parity.py            # ~3 minutes on 2 cores -> results/m3-parity.{md,json}
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))

from corpora import scifact_texts, stsb_pairs  # noqa: E402
from environment import environment_line  # noqa: E402
from make_models import MINILM  # noqa: E402

PRECISIONS = ("fp32-unfused", "fp32", "int8", "fp16")
KEYS = ("dense_mean_cosine", "dense_min_cosine", "colbert_mean_cosine", "colbert_min_cosine",
        "sparse_top10_agreement", "dense_max_abs_diff", "colbert_max_abs_diff", "sparse_max_abs_diff")


def write_source(folder: Path, seed: int = 0) -> None:
    """MiniLM copied (../shared is never written to) with seeded random heads beside its config."""
    import torch

    shutil.copytree(MINILM, folder, dirs_exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    torch.manual_seed(seed)
    torch.save(torch.nn.Linear(384, 1).state_dict(), folder / "sparse_linear.pt")
    torch.save(torch.nn.Linear(384, 384).state_dict(), folder / "colbert_linear.pt")


def real_texts(short: int, abstracts: int) -> dict[str, list[str]]:
    first, second, _ = stsb_pairs()
    sentences = list(dict.fromkeys(first + second))[:short]
    docs = scifact_texts()
    rng = np.random.default_rng(0)
    return {"stsb": sentences, "scifact": [docs[i] for i in rng.choice(len(docs), abstracts, replace=False)]}


def measure(source: Path, folder: Path, texts: dict[str, list[str]]) -> dict:
    import bgeort
    from bgeort.errors import TruncationWarning
    from export import m3

    manifest = bgeort.load_manifest(folder)
    out = {"max_length": manifest.max_length, "export_probes": {}, "real": {}}
    for precision, variant in manifest.variants.items():
        out["export_probes"][precision] = {key: variant.parity.get(key) for key in KEYS}
    for corpus, items in texts.items():
        reference = m3.torch_reference(source, items, max_length=manifest.max_length)
        out["real"][corpus] = {"reference": reference.description}
        for precision in PRECISIONS:
            if precision not in manifest.variants:
                continue
            model = bgeort.M3Embedder(folder, precision=precision, device="cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TruncationWarning)  # abstracts past the max length are cut, as in the reference
                output = model.encode(items, return_dense=True, return_sparse=True, return_colbert_vecs=True)
            numbers = m3.compare(output, reference)
            out["real"][corpus][precision] = {key: numbers[key] for key in KEYS}
            model.close()
    return out


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# bge-m3 export path: int8 and fp16 against PyTorch, real weights and real text", "",
             f"Made by `{result['command']}` on {result['date']} ({result['wall_seconds']:.0f} s). "
             f"{result['environment']}", "",
             "Backbone: the real all-MiniLM-L6-v2 (BERT 6 x 384) exported through bgeort's bge-m3 path with "
             "seeded random sparse (384 -> 1) and ColBERT (384 -> 384) heads (torch seed 0): no bge-m3 weights "
             "are reachable here, and random heads are a limitation of these numbers. Reference: export/m3.py's "
             "`torch_reference` (transformers fp32 + the heads, one text at a time); compared by "
             f"`export.m3.compare`. Max length {result['measured']['max_length']} tokens; texts: "
             + ", ".join(f"{corpus} {n}" for corpus, n in result["counts"].items()) + ".", "",
             "| texts | precision | dense mean cos | dense min cos | ColBERT mean cos | ColBERT min cos | "
             "sparse top-10 agreement | dense max abs | ColBERT max abs | sparse max abs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    tables = [(f"real: {corpus}", rows) for corpus, rows in result["measured"]["real"].items()]
    tables.append(("export probes", result["measured"]["export_probes"]))
    for label, rows in tables:
        for precision in PRECISIONS:
            row = rows.get(precision)
            if row is None:
                continue
            cells = [("–" if row.get(key) is None else f"{row[key]:.4f}" if "abs" not in key else f"{row[key]:.2e}")
                     for key in KEYS]
            lines.append(f"| {label} | {precision} | " + " | ".join(cells) + " |")
    lines += ["", "Thresholds in export/m3.py when this ran: `" + json.dumps(result["thresholds"]) + "`", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=HERE / "results" / "tmp" / "m3-parity")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--short", type=int, default=500, help="STS-B sentences")
    parser.add_argument("--abstracts", type=int, default=100, help="SciFact abstracts")
    args = parser.parse_args(argv)
    started = time.time()
    if args.work.exists():
        shutil.rmtree(args.work)
    source = args.work / "minilm-m3-src"
    write_source(source)
    subprocess.run([sys.executable, "-m", "export", str(source), "--out", str(args.work), "--name", "minilm-m3",
                    "--precisions", "fp32,int8,fp16"], check=True, cwd=REPO)
    from export import m3

    texts = real_texts(args.short, args.abstracts)
    result = {"command": " ".join(["python", "bench/m3_parity.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": environment_line(),
              "counts": {corpus: len(items) for corpus, items in texts.items()},
              "measured": measure(source, args.work / "minilm-m3", texts), "thresholds": m3.THRESHOLDS}
    result["wall_seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "m3-parity.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "m3-parity.md")
    print(args.out / "m3-parity.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
