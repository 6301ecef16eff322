"""Loaders for the evaluation sets in ../shared/data, exactly as each folder's README describes.

Every loader takes a `limit` (None: the whole set) so tests can run a reduced eval on the first
pairs/queries/texts of the real files.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# STS12-16 subsets, in the order sts12-16/README.md lists them (order does not change Spearman).
STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("headlines", "OnWN", "FNWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
STS_TASKS = ("STSBenchmark", "SICK-R", "BIOSSES") + tuple(STS_SUBSETS)
# Tasks whose copy in ../shared/data is not MTEB's: a published score there measures the data as much
# as the model, so it is shown but decides nothing (every other set is exact: ../shared/data/README.md).
DATA_VARIANTS = {"BIOSSES": "this copy differs from mteb/biosses-sts by a pair or two: about -0.39 points for a "
                            "correct fp32 pipeline (../shared/data/biosses/README.md)"}


@dataclass(frozen=True)
class StsSet:
    sentences1: list[str]
    sentences2: list[str]
    gold: np.ndarray  # float64, one score per pair


@dataclass(frozen=True)
class RetrievalSet:
    doc_ids: list[str]
    docs: list[str]  # (title + " " + text).strip(), as BEIR/MTEB build them
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


@dataclass(frozen=True)
class ClassificationSet:
    train_texts: list[str]
    train_labels: np.ndarray  # int
    test_texts: list[str]
    test_labels: np.ndarray


def _sts(pairs: list[tuple[str, str, float]], limit: int | None) -> StsSet:
    pairs = pairs[:limit]
    return StsSet([p[0] for p in pairs], [p[1] for p in pairs], np.array([p[2] for p in pairs], dtype=np.float64))


def load_sts(task: str, *, data: Path = DATA, limit: int | None = None) -> StsSet:
    """One STS task's test pairs with gold scores."""
    if task == "STSBenchmark":
        # original/ is byte-exact with MTEB; tab-separated, no quoting: columns 4, 5, 6.
        lines = (data / "stsb" / "original" / "sts-test.csv").read_text(encoding="utf-8").splitlines()
        rows = [line.split("\t") for line in lines if line]
        return _sts([(r[5], r[6], float(r[4])) for r in rows], limit)
    if task == "SICK-R":
        with open(data / "sickr" / "SICK.txt", encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
        return _sts([(r["sentence_A"], r["sentence_B"], float(r["relatedness_score"])) for r in rows], limit)
    if task == "BIOSSES":
        with open(data / "biosses" / "all.tsv", encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))  # honours quotes: one field holds a tab
        return _sts([(r["sentence1"], r["sentence2"], float(r["score"])) for r in rows], limit)
    if task in STS_SUBSETS:
        pairs = []
        folder = data / "sts12-16" / f"{task}-en-test"
        for subset in STS_SUBSETS[task]:
            inputs = _lines(folder / f"STS.input.{subset}.txt")
            gold = _lines(folder / f"STS.gs.{subset}.txt")
            for line, score in zip(inputs, gold):
                if score.strip():
                    first, second = line.split("\t")[0:2]
                    pairs.append((first, second, float(score)))
        return _sts(pairs, limit)
    raise ValueError(f"unknown STS task {task!r}; one of {', '.join(STS_TASKS)}")


def _lines(path: Path) -> list[str]:
    """Split on \\n and drop one trailing empty line, as the sts12-16 README prescribes."""
    lines = path.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def load_scifact(*, data: Path = DATA, split: str = "test", queries: int | None = None,
                 extra_docs: int | None = None) -> RetrievalSet:
    """SciFact in BEIR format. `queries` keeps the first N queries of the split; `extra_docs`
    keeps only their judged documents plus the first N others of the corpus (None: all 5,183)."""
    folder = data / "scifact"
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as stream:
        for row in csv.DictReader(stream, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    texts = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as stream:
        for line in stream:
            item = json.loads(line)
            texts[item["_id"]] = item["text"]
    query_ids = [qid for qid in texts if qid in qrels][:queries]
    qrels = {qid: qrels[qid] for qid in query_ids}
    doc_ids, docs = [], []
    judged = {doc for judgments in qrels.values() for doc in judgments}
    with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as stream:
        others = 0
        for line in stream:
            item = json.loads(line)
            if extra_docs is not None and item["_id"] not in judged:
                if others >= extra_docs:
                    continue
                others += 1
            doc_ids.append(item["_id"])
            docs.append((item["title"] + " " + item["text"]).strip())
    return RetrievalSet(doc_ids, docs, query_ids, [texts[q] for q in query_ids], qrels)


def load_banking77(*, data: Path = DATA, test_limit: int | None = None) -> ClassificationSet:
    """Banking77 with labels numbered in categories.json order (label ids do not matter)."""
    folder = data / "banking77"
    names = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
    index = {name: i for i, name in enumerate(names)}

    def read(name: str):
        with open(folder / name, encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
        return [r["text"] for r in rows], np.array([index[r["category"]] for r in rows], dtype=np.int64)

    train_texts, train_labels = read("train.csv")
    test_texts, test_labels = read("test.csv")
    return ClassificationSet(train_texts, train_labels, test_texts[:test_limit], test_labels[:test_limit])
