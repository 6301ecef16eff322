"""python -m export [SOURCE] [--out models] [--name NAME] ...: see --help."""

from __future__ import annotations

import argparse
import sys

from .families import DEFAULT_SOURCE, FAMILIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a BGE (or any BERT sentence-transformers) model to a verified bgeort model folder.",
    )
    parser.add_argument("source", nargs="?", default=DEFAULT_SOURCE,
                        help=f"hub id or local folder (default {DEFAULT_SOURCE}); offline, give a local folder")
    parser.add_argument("--out", default="models", help="parent folder of the model folder (default models)")
    parser.add_argument("--name", help="model folder name (default: the family's name or the source folder's)")
    parser.add_argument("--family", choices=sorted(FAMILIES),
                        help="treat the source as this table row (default: matched from the source's name)")
    parser.add_argument("--pooling", choices=["cls", "mean"], help="override the pooling")
    parser.add_argument("--max-length", type=int, help="override the max length in tokens")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: optimum's choice for the model)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--precisions", default="fp32,int8,fp16",
                        help="comma-separated variants to build besides the unfused fp32 (default fp32,int8,fp16)")
    parser.add_argument("--int8-weight-bits", type=int, choices=[7, 8], default=7,
                        help="7 (default): exact with the fast int8 kernels on every x86 CPU; 8: closer to fp32 "
                             "(all-MiniLM-L6-v2 STS-B cosine to fp32 0.9992 vs 0.9984), but x86 CPUs without "
                             "VNNI (AVX2-only) then run onnxruntime's slower exact int8 kernels")
    parser.add_argument("--int8-activations", choices=["token", "layernorm-static", "static"], default="token",
                        help="token (default): a scale per token computed at run time, batch-independent and "
                             "robust to any text; static: one calibrated scale per tensor, fewer operators "
                             "(faster, see export/int8.py) but further from fp32, and values past the "
                             "calibrated range saturate; layernorm-static: static for LayerNorm outputs only "
                             "(the Q/K/V and FFN inputs), per token for the rest: in between")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a source that ships its own model code (config.json auto_map) run it; refused "
                             "without this flag")
    args = parser.parse_args(argv)
    precisions = tuple(p.strip() for p in args.precisions.split(",") if p.strip())
    unknown = set(precisions) - {"fp32", "int8", "fp16"}
    if unknown:
        parser.error(f"unknown precisions {sorted(unknown)}; choose from fp32, int8, fp16")

    try:
        from .pipeline import export_model
        from .source import ExportError
    except ImportError as exc:
        print(f"error: the export stage needs its extra ({exc}). Install it with: pip install -e '.[export]'",
              file=sys.stderr)
        return 2
    try:
        folder = export_model(args.source, out=args.out, name=args.name, family=args.family, pooling=args.pooling,
                              max_length=args.max_length, opset=args.opset, precisions=precisions,
                              revision=args.revision, int8_weight_bits=args.int8_weight_bits,
                              int8_activations=args.int8_activations, trust_remote_code=args.trust_remote_code)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
