"""Build the benchmark's model folders (git-ignored, under bench/results/tmp/models by default).

For each model key there is one folder with:
  src/        a sentence-transformers folder (transformers weights, tokenizer, ST config) plus
              onnx/model.onnx and sentence-transformers' own int8 export, made by sentence-transformers
  bgeort/     the bgeort export of src (python -m export)
  bgeort-static/  the same with --int8-activations static (int8 only)
  bgeort-lnstatic/  the same with --int8-activations layernorm-static (int8 only)
  fastembed/  the plain fp32 graph bgeort's CPU fp32 variant is made from (before pooling and the
              first-token last layer) with the source's tokenizer files, for fastembed

Keys: `bge-small` is a BERT of bge-small-en-v1.5's exact shape (12 x 384, 12 heads, 1536 FFN,
30522 vocab) with random weights (torch seed 0) and the real uncased vocab from all-MiniLM-L6-v2;
`minilm` is the real all-MiniLM-L6-v2 from ../shared/models, for the quality columns.

    python bench/make_models.py [--root DIR] [--only bge-small|minilm] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MINILM = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
DEFAULT_ROOT = REPO / "bench" / "results" / "tmp" / "models"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import cpu_flags  # noqa: E402

MODEL_KEYS = ("bge-small", "minilm")


def st_int8_config(isa: str = "native") -> str:
    """sentence-transformers' quantization preset that matches this CPU, as its docs advise; with
    isa="avx2" (bench/isa.py's mask) the one for an AVX2 CPU."""
    if isa == "avx2":
        return "avx2"
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "arm64"


def st_int8_file(isa: str = "native") -> str:
    preset = st_int8_config(isa)
    dtype = "quint8" if preset == "avx2" else "qint8"  # optimum's AutoQuantizationConfig weight types
    return f"onnx/model_{dtype}_{preset}.onnx"


def write_bge_small_source(folder: Path) -> None:
    """Random-weight BERT of bge-small's shape, as a sentence-transformers folder with CLS pooling."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, folder / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))


def write_minilm_source(folder: Path) -> None:
    # A copy, not symlinks: sentence-transformers' save_pretrained rewrites the folder's files, and
    # ../shared must never be written to.
    shutil.copytree(MINILM, folder, dirs_exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def add_st_onnx(folder: Path) -> None:
    """onnx/model.onnx and the int8 file, exactly as sentence-transformers' docs make them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    model = SentenceTransformer(str(folder), backend="onnx", device="cpu",
                                model_kwargs={"provider": "CPUExecutionProvider"})
    model.save_pretrained(str(folder))
    for isa in ("native", "avx2"):  # the second for `bench/cpu.py --isa avx2`
        if isa == "native" or st_int8_config() != "avx2":
            export_dynamic_quantized_onnx_model(model, st_int8_config(isa), str(folder))
        if not (folder / st_int8_file(isa)).is_file():
            raise SystemExit(f"sentence-transformers did not write {folder / st_int8_file(isa)}")


def export_bgeort(src: Path, out: Path, family: str | None, *extra: str) -> None:
    command = [sys.executable, "-m", "export", str(src), "--out", str(out.parent), "--name", out.name, *extra]
    if family:
        command += ["--family", family]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, check=True, cwd=REPO, env=env)


def write_fastembed_folder(src: Path, folder: Path) -> None:
    """fastembed reads model.onnx, tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    config.json from one folder: the fp32 graph bgeort's CPU fp32 variant is made from (optimum's
    plain graph, shapes folded: faster on CPU than the fused one), before bgeort pools inside it and
    narrows its last layer to the first token (fastembed pools token states itself), with the
    source's tokenizer files as a user would have them (tokenizer.json's own truncation and padding
    kept)."""
    sys.path.insert(0, str(REPO))
    from export import stages

    folder.mkdir(parents=True, exist_ok=True)
    graph = folder / "model.onnx"
    if graph.is_symlink() or graph.exists():
        graph.unlink()
    stages.export_onnx(src, graph, task="feature-extraction", opset=None)
    stages.fold_plain(graph)
    for name in (*TOKENIZER_FILES, "config.json"):
        shutil.copy(src / name, folder / name)


def build_fingerprint() -> str:
    """Hash of the code that builds the folders: a change to export/, the manifest or this file rebuilds them."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "export").glob("*.py")) + [REPO / "bgeort" / "manifest.py", Path(__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def make_model(key: str, root: Path, *, force: bool = False) -> Path:
    base = root / key
    stamp = base / "ready"
    if not force and stamp.is_file() and stamp.read_text().strip() == build_fingerprint():
        return base
    if base.exists():
        shutil.rmtree(base)
    src = base / "src"
    src.mkdir(parents=True)
    print(f"[make_models] {key}: source folder", file=sys.stderr, flush=True)
    if key == "bge-small":
        write_bge_small_source(src)
    else:
        write_minilm_source(src)
    # bgeort and fastembed get the folder as shipped: sentence-transformers' save_pretrained (below)
    # rewrites modules.json and 1_Pooling/config.json in its 5.x format, which bgeort's export does
    # not read (see the bench README).
    print(f"[make_models] {key}: bgeort export", file=sys.stderr, flush=True)
    pristine = MINILM if key == "minilm" else src
    export_bgeort(pristine, base / "bgeort", "bge-small-en-v1.5" if key == "bge-small" else None)
    print(f"[make_models] {key}: bgeort export, static int8 activations", file=sys.stderr, flush=True)
    export_bgeort(pristine, base / "bgeort-static", "bge-small-en-v1.5" if key == "bge-small" else None,
                  "--precisions", "int8", "--int8-activations", "static")
    print(f"[make_models] {key}: bgeort export, layernorm-static int8 activations", file=sys.stderr, flush=True)
    export_bgeort(pristine, base / "bgeort-lnstatic", "bge-small-en-v1.5" if key == "bge-small" else None,
                  "--precisions", "int8", "--int8-activations", "layernorm-static")
    write_fastembed_folder(pristine, base / "fastembed")
    print(f"[make_models] {key}: sentence-transformers ONNX export, {st_int8_config()} and avx2 int8", file=sys.stderr,
          flush=True)
    add_st_onnx(src)
    stamp.write_text(build_fingerprint() + "\n")
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--only", choices=MODEL_KEYS)
    parser.add_argument("--force", action="store_true", help="rebuild folders that already exist")
    args = parser.parse_args(argv)
    for key in [args.only] if args.only else MODEL_KEYS:
        print(make_model(key, args.root, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
