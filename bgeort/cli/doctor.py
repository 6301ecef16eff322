"""`bgeort doctor [MODEL]`: the onnxruntime build, providers, CUDA libraries and CPU features."""

from __future__ import annotations

HELP = "onnxruntime build, providers, CUDA libraries, CPU features (and which variant a model would run)"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="also say which variant each device would run")


def run(args) -> int:
    from ..doctor import report

    print("\n".join(report(args.model)))
    return 0
