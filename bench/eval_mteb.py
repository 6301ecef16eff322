"""`python -m bench.eval_mteb MODEL`: the MTEB harness (`mteb.evaluate`) on an exported folder through
`bgeort.integrations.mteb.BgeortEncoder`, offline, on the local STS-B, SICK-R and SciFact copies in
../shared/data (loaded here into mteb's own task objects; nothing comes from the hub). Each score is
set beside bench/eval's (`make eval`'s code, same folder and precision, same data) and the published one.

Exit 1 when mteb and bench/eval disagree (STS: more than 1e-4 points; SciFact, rounded to 5 decimals
by both: more than 1e-3), or, on the full sets, when a score is more than 0.01 points off the published
one (make eval's bar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .eval import data, tasks
from .eval.columns import BgeortColumn
from .eval.published import published_for

TASKS = ("STSBenchmark", "SICK-R", "SciFact")
AGREE = {"STSBenchmark": 1e-4, "SICK-R": 1e-4, "SciFact": 1e-3}  # points (x100)
PUBLISHED_BAR = 0.01


def offline_task(name: str, *, data_dir: Path, limit: int | None):
    """mteb's task object for `name`, its data set from ../shared/data (no download)."""
    import mteb
    from datasets import Dataset

    task = mteb.get_task(name)
    if name == "SciFact":
        found = data.load_scifact(data=data_dir, queries=limit, extra_docs=None if limit is None else 10 * limit)
        split = {"corpus": Dataset.from_dict({"id": found.doc_ids, "title": [""] * len(found.docs), "text": found.docs}),
                 "queries": Dataset.from_dict({"id": found.query_ids, "text": found.queries}),
                 "relevant_docs": found.qrels, "top_ranked": None}
    else:
        found = data.load_sts(name, data=data_dir, limit=limit)
        split = Dataset.from_dict({"sentence1": found.sentences1, "sentence2": found.sentences2,
                                   "score": found.gold.tolist()})
    task.dataset = {"default": {"test": split}}
    task.data_loaded = True
    return task, found


def mteb_scores(encoder, found_tasks: dict) -> dict[str, float]:
    """Main scores x100 from mteb.evaluate (no results cache: every run computes)."""
    import mteb

    results = mteb.evaluate(encoder, [task for task, _ in found_tasks.values()], cache=None, show_progress_bar=False)
    return {result.task_name: 100 * result.get_score() for result in results.task_results}


def eval_scores(model: Path, precision: str, found_tasks: dict, instruction: str) -> dict[str, float]:
    """The same tasks through bench/eval's own code (make eval)."""
    column = BgeortColumn(model, precision)
    out = {}
    for name, (_, found) in found_tasks.items():
        if name == "SciFact":
            out[name] = tasks.retrieval_scores(tasks.retrieve(column, found, instruction=instruction), found.qrels)[
                "ndcg_at_10"]
        else:
            out[name] = tasks.sts_score(column, found)
    return out


def compare(model: Path, *, names=TASKS, precision: str = "fp32", limit: int | None = None,
            data_dir: Path = data.DATA) -> list[dict]:
    """One row per task: mteb's score, bench/eval's, the published one, and whether each bar holds."""
    from bgeort.integrations.mteb import BgeortEncoder

    encoder = BgeortEncoder(model, precision=precision, device="cpu", spinning=False)
    found_tasks = {name: offline_task(name, data_dir=data_dir, limit=limit) for name in names}
    from_mteb = mteb_scores(encoder, found_tasks)
    from_eval = eval_scores(model, precision, found_tasks, encoder.embedder.query_instruction)
    published = published_for(Path(model).name)
    rows = []
    for name in names:
        row = {"task": name, "mteb": from_mteb[name], "bench.eval": from_eval[name],
               "published": published.get(name) if limit is None else None}
        row["agree"] = abs(row["mteb"] - row["bench.eval"]) <= AGREE[name]
        row["matches_published"] = None if row["published"] is None else abs(
            row["mteb"] - row["published"]) <= PUBLISHED_BAR
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_mteb", description=__doc__)
    parser.add_argument("model", type=Path, help="an exported embedder folder (models/<name>)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of %(default)s")
    parser.add_argument("--precision", default="fp32", help="the variant to run (default: %(default)s, as published)")
    parser.add_argument("--limit", type=int, help="a reduced run: the first N pairs / N SciFact queries")
    parser.add_argument("--data", type=Path, default=data.DATA, help="the evaluation sets (default: %(default)s)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = [name for name in args.tasks.split(",") if name]
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    rows = compare(args.model, names=names, precision=args.precision, limit=args.limit, data_dir=args.data)
    print(f"| task | mteb.evaluate | bench/eval | published | mteb = bench/eval | mteb = published (±{PUBLISHED_BAR}) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        published = "–" if row["published"] is None else f"{row['published']:.4f}"
        matches = "–" if row["matches_published"] is None else ("yes" if row["matches_published"] else "NO")
        print(f"| {row['task']} | {row['mteb']:.6f} | {row['bench.eval']:.6f} | {published} | "
              f"{'yes' if row['agree'] else 'NO'} | {matches} |")
    return 0 if all(row["agree"] and row["matches_published"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
