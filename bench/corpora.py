"""The benchmark's corpora, all real text from ../shared/data, chosen deterministically.

- short: STS-B test sentences (both columns, first occurrence order), ~15 tokens each
- rag:   SciFact abstracts, (title + " " + text).strip(), a seeded sample (~340 tokens mean)
- mix:   a long-tailed mix: the first n words of a random abstract, n log-normal (median 20 words),
         so most texts are short and a few are whole chunks
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MINILM_DIR = DATA.parent / "models" / "all-MiniLM-L6-v2"
STSB_TEST = DATA / "stsb" / "stsb-en-test.csv"
SCIFACT = DATA / "scifact" / "corpus.jsonl.gz"

# Sized so that `make bench` (3 rounds, 1 and 2 threads, every peer) takes about 20 minutes on 2 cores.
SIZES = {"full": {"short": 384, "rag": 32, "mix": 128}, "quick": {"short": 128, "rag": 12, "mix": 48}}


def stsb_pairs(path: Path = STSB_TEST) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, gold scores) of the STS-B test split."""
    first, second, scores = [], [], []
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.reader(stream):
            first.append(row[0])
            second.append(row[1])
            scores.append(float(row[2]))
    return first, second, np.asarray(scores)


def scifact_texts(path: Path = SCIFACT) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        docs = [json.loads(line) for line in stream]
    return [(doc["title"] + " " + doc["text"]).strip() for doc in docs]


def build_corpora(size: str = "full", seed: int = 0) -> dict[str, list[str]]:
    counts = SIZES[size]
    first, second, _ = stsb_pairs()
    sentences = list(dict.fromkeys(first + second))
    abstracts = scifact_texts()
    rng = np.random.default_rng(seed)
    rag = [abstracts[i] for i in rng.choice(len(abstracts), counts["rag"], replace=False)]
    mix = []
    for _ in range(counts["mix"]):
        words = abstracts[int(rng.integers(len(abstracts)))].split()
        n = int(np.clip(round(float(np.exp(rng.normal(np.log(20), 1.0)))), 3, len(words)))
        mix.append(" ".join(words[:n]))
    return {"short": sentences[: counts["short"]], "rag": rag, "mix": mix}
