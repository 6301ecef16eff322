"""`python -m bench.eval MODEL [--reranker RERANKER]`: the quality report of an exported folder."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import report
from .data import DATA
from .run import PRECISIONS, QUICK, Scope, evaluate, failed

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__)
    parser.add_argument("model", help="an exported embedder folder (models/<name>)")
    parser.add_argument("--reranker", help="an exported reranker folder: rerank SciFact's top-100")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--no-reference", action="store_true", help="skip the transformers + PyTorch column")
    parser.add_argument("--reference-source", help="the reference's model folder (default: the manifest's source)")
    parser.add_argument("--tasks", default="sts,retrieval,classification",
                        help="families or single STS tasks, e.g. STSBenchmark,BIOSSES (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a reduced smoke run (300 pairs per STS task, ...)")
    parser.add_argument("--data", type=Path, default=DATA, help="the evaluation sets (default: %(default)s)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    parser.add_argument("--out", type=Path, help="output path without suffix (default: bench/results/eval-<name>)")
    args = parser.parse_args(argv)

    families = tuple(name.strip() for name in args.tasks.split(",") if name.strip())
    scope = QUICK if args.quick else Scope()
    scope = Scope(**{**scope.__dict__, "families": families})
    command = "python -m bench.eval " + shlex.join(argv)
    stem = args.out

    def checkpoint(partial: dict) -> None:  # a report after every column, marked partial
        report.write({**partial, "notes": partial["notes"] + ["PARTIAL: the run has not finished"]},
                     stem or RESULTS / f"eval-{partial['model']}", command=command)

    result = evaluate(args.model, precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
                      reference=not args.no_reference, reference_source=args.reference_source,
                      reranker=args.reranker, scope=scope, notes=args.note, data_dir=args.data,
                      log=lambda message: print(message, file=sys.stderr, flush=True), progress=checkpoint)
    stem = stem or RESULTS / f"eval-{result['model']}"
    md, js = report.write(result, stem, command=command)
    print(md.read_text(encoding="utf-8"))
    print(f"written: {md} {js}", file=sys.stderr)
    failures = failed(result)
    for check in failures:
        print(f"FAILED: {check['check']} (delta {check['delta']:+.4f})", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
