"""The evaluation: every column over every task, then the checks the issue asks for."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import data, tasks
from .columns import BgeortColumn, reference_column
from .published import published_for

PRECISIONS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class Scope:
    """How much of each set to use; the defaults are the full MTEB test sets."""

    sts_pairs: int | None = None  # first N pairs of each STS task
    scifact_queries: int | None = None  # first N test queries
    scifact_extra_docs: int | None = None  # the judged documents plus the first N others
    banking_test: int | None = None  # first N test texts
    banking_experiments: int = 10
    rerank_depth: int = 100
    families: tuple[str, ...] = ("sts", "retrieval", "classification")

    @property
    def full(self) -> bool:
        return (self.sts_pairs, self.scifact_queries, self.scifact_extra_docs, self.banking_test) == (None,) * 4 \
            and self.banking_experiments == 10


QUICK = Scope(sts_pairs=300, scifact_queries=30, scifact_extra_docs=300, banking_test=300, banking_experiments=2)


@dataclass
class Row:
    task: str
    metric: str
    published: float | None
    values: dict  # column name -> score x100
    truncated: int  # texts of the task longer than the model's max length
    key: str  # the published-table key, and what checks refer to


def load_sets(scope: Scope, data_dir: Path) -> dict:
    """The sets of `scope.families`: family names (sts, retrieval, classification) or single STS task names."""
    known = {"sts", "retrieval", "classification", *data.STS_TASKS}
    unknown = sorted(set(scope.families) - known)
    if unknown:
        raise ValueError(f"unknown task families or tasks {unknown}; use any of {sorted(known)}")
    sets = {}
    wanted_sts = data.STS_TASKS if "sts" in scope.families else [t for t in data.STS_TASKS if t in scope.families]
    sets.update({task: data.load_sts(task, data=data_dir, limit=scope.sts_pairs) for task in wanted_sts})
    if "retrieval" in scope.families:
        sets["SciFact"] = data.load_scifact(data=data_dir, queries=scope.scifact_queries,
                                            extra_docs=scope.scifact_extra_docs)
    if "classification" in scope.families:
        sets["Banking77"] = data.load_banking77(data=data_dir, test_limit=scope.banking_test)
    return sets


def score_column(column, sets: dict, scope: Scope, instruction: str) -> tuple[dict, dict | None]:
    """Scores keyed by row key, and (for reranking) the SciFact run with the query instruction."""
    scores, run = {}, None
    for name, task in sets.items():
        if isinstance(task, data.StsSet):
            scores[name] = tasks.sts_score(column, task)
        elif isinstance(task, data.RetrievalSet):
            variants = [("", instruction)] + ([(", no instruction", "")] if instruction else [])
            for suffix, prefix in variants:
                this_run = tasks.retrieve(column, task, instruction=prefix)
                found = tasks.retrieval_scores(this_run, task.qrels)
                scores[f"{name}{suffix}"] = found["ndcg_at_10"]
                scores[f"{name} recall@100{suffix}"] = found["recall_at_100"]
                run = run or this_run
        else:
            scores[name] = tasks.classification_accuracy(column, task, experiments=scope.banking_experiments)
    return scores, run


def row_specs(sets: dict, instruction: str) -> list[tuple[str, str, str]]:
    """(key, task label, metric) per report row, in table order."""
    specs = []
    for name, task in sets.items():
        if isinstance(task, data.StsSet):
            specs.append((name, name, "cos Spearman"))
        elif isinstance(task, data.RetrievalSet):
            with_note = " (query instruction)" if instruction else ""
            specs += [(name, f"{name}{with_note}", "nDCG@10"),
                      (f"{name} recall@100", f"{name}{with_note}", "recall@100")]
            if instruction:
                specs += [(f"{name}, no instruction", f"{name} (no instruction)", "nDCG@10"),
                          (f"{name} recall@100, no instruction", f"{name} (no instruction)", "recall@100")]
        else:
            specs.append((name, name, "accuracy"))
    return specs


def truncation_counts(embedder, sets: dict, instruction: str) -> dict:
    counts = {}
    for name, task in sets.items():
        if isinstance(task, data.StsSet):
            counts[name] = tasks.truncated_count(embedder, task.sentences1 + task.sentences2)
        elif isinstance(task, data.RetrievalSet):
            docs = tasks.truncated_count(embedder, task.docs)
            for suffix, prefix in (("", instruction), (", no instruction", "")):
                found = docs + tasks.truncated_count(embedder, task.queries, instruction=prefix)
                counts[f"{name}{suffix}"] = counts[f"{name} recall@100{suffix}"] = found
        else:
            counts[name] = tasks.truncated_count(embedder, task.train_texts + task.test_texts)
    return counts


def evaluate(model: str | Path, *, precisions=PRECISIONS, reference: bool = True, reference_source: str | None = None,
             reranker: str | Path | None = None, scope: Scope = Scope(), data_dir: Path = data.DATA,
             log=print, progress=None, notes: list[str] = ()) -> dict:
    """Score each runnable precision of `model`, then the reference, on every task of `scope`;
    `progress(partial_result)` is called after each column (so a long run leaves a report behind)."""
    from bgeort import load_manifest

    manifest = load_manifest(model)
    instruction = manifest.query_instruction
    published = published_for(manifest.name)
    sets = load_sets(scope, data_dir)
    columns, notes, results, runs = {}, list(notes), {}, {}

    factories = []
    for precision in precisions:
        if precision not in manifest.variants:
            notes.append(f"{precision}: not in the folder (variants: {', '.join(manifest.variants)})")
            continue
        factories.append((precision, lambda p=precision: (BgeortColumn(model, p), f"bgeort {p}, CPU, no spinning")))
    if reference:  # last: the slowest column, and the bgeort ones are what the checks are about
        factories.append(("reference", lambda: reference_column(manifest, source=reference_source)))
    truncated = {}
    for name, make in factories:
        log(f"[eval] {name}: loading")
        try:
            column, description = make()
        except Exception as exc:  # a precision that cannot run on CPU is reported, not fatal
            column, description = None, f"{name} not runnable on CPU: {type(exc).__name__}: {exc}"
        if column is None:
            notes.append(description)
            log(f"[eval] {description}")
            continue
        if not truncated and isinstance(column, BgeortColumn):
            truncated = truncation_counts(column.embedder, sets, instruction)
        start = time.perf_counter()
        results[name], runs[name] = score_column(column, sets, scope, instruction)
        columns[name] = {"description": description, **column.throughput()}
        log(f"[eval] {name}: {time.perf_counter() - start:.0f} s, "
            + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()))
        del column
        gc.collect()
        if progress is not None:
            progress(assemble(manifest, model, published, sets, scope, columns, results, truncated, notes, None))
    reranking = None
    if reranker is not None and "SciFact" in sets:
        reranking = rerank_column(reranker, sets["SciFact"], runs, scope, log)
    return assemble(manifest, model, published, sets, scope, columns, results, truncated, notes, reranking)


def assemble(manifest, model, published, sets, scope, columns, results, truncated, notes, reranking) -> dict:
    """The result document: rows in table order, columns as reference, fp32, int8, fp16."""
    instruction = manifest.query_instruction
    order = ["reference", *PRECISIONS]
    names = sorted(results, key=lambda name: order.index(name) if name in order else len(order))
    rows = [Row(task=label, metric=metric, published=published.get(key), truncated=truncated.get(key, 0), key=key,
                values={name: results[name][key] for name in names if key in results[name]})
            for key, label, metric in row_specs(sets, instruction)]
    return {
        "model": manifest.name,
        "path": str(model),
        "manifest": {"pooling": manifest.pooling, "max_length": manifest.max_length, "dim": manifest.dim,
                     "query_instruction": instruction, "source": manifest.provenance.get("source")},
        "published_source": published.get("source"),
        "scope": {**asdict(scope), "full": scope.full},
        "environment": environment(),
        "columns": {name: columns[name] for name in names},
        "rows": [asdict(row) for row in rows],
        "reranking": reranking,
        "checks": checks(rows, published, full=scope.full),
        "notes": list(notes),
    }


def rerank_column(reranker: str | Path, task, runs: dict, scope: Scope, log) -> dict | None:
    from bgeort import Reranker

    source = next((name for name in ("fp32", "int8", "fp16", "reference") if runs.get(name)), None)
    if source is None:
        return None
    model = Reranker(reranker, device="cpu")
    log(f"[eval] reranking the {source} top-{scope.rerank_depth} of {len(task.query_ids)} queries with {reranker}")
    found = tasks.rerank(model, task, runs[source], depth=scope.rerank_depth)
    return {"reranker": model.manifest.name, "path": str(reranker), "precision": model.precision,
            "first_stage": source, **found}


def checks(rows: list[Row], published: dict, *, full: bool) -> list[dict]:
    """The bars of issue 5, each with whether it decides the exit code.

    fp32 reproduces published STS-B and SICK-R within 0.01 points; int8 is within 0.5 points of fp32
    on every STS task and SciFact (any scope: both columns see the same texts), and of the published
    score on the full sets. A published score on a copy of the data that is not MTEB's
    (data.DATA_VARIANTS) is shown and decides nothing: it measures the data, not bgeort.
    """
    found = []

    def check(name: str, delta: float, bar: float, key: str, *, against_published: bool) -> None:
        variant = against_published and key in data.DATA_VARIANTS
        found.append({"check": name + (" (data differ from MTEB's: shown, decides nothing)" if variant else ""),
                      "delta": delta, "passed": abs(delta) <= bar, "decides": not variant})

    by_key = {row.key: row for row in rows}
    for key in ("STSBenchmark", "SICK-R"):
        row = by_key.get(key)
        if full and row and row.published is not None and "fp32" in row.values:
            check(f"fp32 {key} within ±0.01 of published", row.values["fp32"] - row.published, 0.01, key,
                  against_published=True)
    for key in data.STS_TASKS + ("SciFact",):
        row = by_key.get(key)
        if not row or "int8" not in row.values:
            continue
        if "fp32" in row.values:
            check(f"int8 {key} within 0.5 of fp32", row.values["int8"] - row.values["fp32"], 0.5, key,
                  against_published=False)
        if full and row.published is not None:
            check(f"int8 {key} within 0.5 of published", row.values["int8"] - row.published, 0.5, key,
                  against_published=True)
    return found


def failed(result: dict) -> list[dict]:
    """The checks that fail and decide the exit code (a report written before `decides` existed: every check)."""
    return [c for c in result["checks"] if not c["passed"] and c.get("decides", True)]


def environment() -> dict:
    import numpy
    import onnxruntime

    return {"python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "sklearn": _version("sklearn"),
            "torch": _version("torch"), "transformers": _version("transformers")}


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None
