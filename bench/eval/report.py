"""The eval results as a markdown report and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

DELTAS = (("fp32", "published"), ("fp32", "reference"), ("int8", "fp32"), ("fp16", "fp32"))


def _value(row: dict, name: str):
    return row["published"] if name == "published" else row["values"].get(name)


def _digits(row: dict) -> int:
    return 3 if row["metric"] in ("nDCG@10", "recall@100") else 4  # retrieval: MTEB rounds to 5 decimals


def _cell(value, digits: int, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def to_markdown(result: dict, *, command: str) -> str:
    columns = list(result["columns"])
    deltas = [(a, b) for a, b in DELTAS if a in columns and (b == "published" or b in columns)]
    header = ["task", "metric", "published", *columns, *(f"{a} − {b}" for a, b in deltas), "truncated"]
    lines = [f"# Quality eval: {result['model']}", "",
             f"Produced by `{command}`", "",
             _summary(result), "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for row in result["rows"]:
        digits = _digits(row)
        cells = [row["task"], row["metric"], _cell(row["published"], digits)]
        cells += [_cell(row["values"].get(name), digits) for name in columns]
        for a, b in deltas:  # 6 decimals: a correct fp32 pipeline is within ~1e-5 points of published STS
            x, y = _value(row, a), _value(row, b)
            cells.append(_cell(None if x is None or y is None else x - y, 6 if digits == 4 else digits, signed=True))
        cells.append(str(row["truncated"]))
        lines.append("| " + " | ".join(cells) + " |")
    speed = ["**tokens/s**", "", ""] + [_cell(result["columns"][c]["tokens_per_s"], 0) for c in columns]
    lines.append("| " + " | ".join(speed + [""] * (len(deltas) + 1)) + " |")
    lines += ["", "Scores ×100. Columns:", ""]
    lines += [f"- **{name}**: {info['description']}; {info['texts']} unique texts, {info['tokens']} tokens "
              f"in {info['seconds']:.1f} s" for name, info in result["columns"].items()]
    lines += _reranking(result.get("reranking"))
    lines += _checks(result["checks"])
    lines += ["", "## Notes", ""] + [f"- {note}" for note in _notes(result)]
    return "\n".join(lines) + "\n"


def _summary(result: dict) -> str:
    env = result["environment"]
    manifest = result["manifest"]
    scope = "full MTEB test sets" if result["scope"]["full"] else f"REDUCED scope {result['scope']}"
    return (f"Model folder `{result['path']}` ({manifest['pooling']} pooling, max_length {manifest['max_length']}, "
            f"query instruction {manifest['query_instruction']!r}); {scope}. Published numbers: "
            f"{result['published_source'] or 'none known for this model'}. Machine: {env['cores']} cores "
            f"({env['cpu']}), onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, scikit-learn {env['sklearn']}.")


def _reranking(reranking: dict | None) -> list[str]:
    if not reranking:
        return []
    return ["", "## Reranking", "",
            f"{reranking['reranker']} ({reranking['precision']}) rescoring the {reranking['first_stage']} column's "
            f"SciFact top-{reranking['depth']} ({reranking['pairs']} pairs, {reranking['pairs_per_s']} pairs/s, "
            f"{reranking['truncation_warnings']} truncation warnings).", "",
            "| | nDCG@10 |", "|---|---:|",
            f"| before (embedder) | {reranking['ndcg_at_10_before']:.3f} |",
            f"| after (reranker) | {reranking['ndcg_at_10_after']:.3f} |"]


def _checks(checks: list[dict]) -> list[str]:
    if not checks:
        return ["", "## Checks", "", "No checks: no int8 and fp32 columns to compare, and no published numbers "
                "for this model (or a reduced scope)."]
    lines = ["", "## Checks", "",
             "The run exits non-zero when a check marked **yes** in the last column fails; the others are shown "
             "for reference (a published score on data that are not MTEB's measures the data).", "",
             "| check | delta | result | decides the exit code |", "|---|---:|---|---|"]
    lines += [f"| {c['check']} | {c['delta']:+.6f} | {'pass' if c['passed'] else '**FAIL**'} | "
              f"{'yes' if c.get('decides', True) else 'no'} |" for c in checks]
    return lines


def _notes(result: dict) -> list[str]:
    notes = list(result["notes"])
    notes += [
        "STS: cosine = 1 − 0.5·‖â − b̂‖² in float64 (sklearn's paired cosine), Spearman by scipy, as MTEB.",
        "SciFact: documents `(title + ' ' + text).strip()`, float32 cosine, top 1000 per query, trec_eval "
        "order (score, then doc id descending), nDCG@10 / recall@100 averaged over the test queries and "
        "rounded to 5 decimals as MTEB does.",
        "Banking77: MTEB's logReg protocol (10 experiments × 8 samples per label, numpy RNG reseeded with 42 "
        "before each shuffle, LogisticRegression(random_state=42, max_iter=100)); exact equality with the "
        "published number also needs MTEB's scikit-learn version.",
        "BIOSSES: this copy differs from mteb/biosses-sts by a pair or two (../shared/data/biosses/README.md): "
        "about −0.39 points for a correct MiniLM pipeline. Its published score decides no check; int8 is judged "
        "against fp32 there.",
        "truncated: texts of the task longer than the model's max length (cut to it, as sentence-transformers "
        "does; the eval silences bgeort's TruncationWarning and counts them here).",
        "tokens/s: tokens actually encoded (after truncation, special tokens included) over the seconds spent "
        "encoding, per column; each unique text is encoded once per column. Run with other work on the "
        "machine, so compare columns with each other, not with bench/ numbers.",
    ]
    return notes


def rewrite_markdown(json_path: Path) -> Path:
    """Render the markdown again from a written JSON (after a change to this module)."""
    result = json.loads(Path(json_path).read_text(encoding="utf-8"))
    md = Path(json_path).with_suffix(".md")
    md.write_text(to_markdown(result, command=result.pop("command")), encoding="utf-8")
    return md


def write(result: dict, stem: Path, *, command: str) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(to_markdown(result, command=command), encoding="utf-8")
    js.write_text(json.dumps({"command": command, **result}, indent=2) + "\n", encoding="utf-8")
    return md, js


if __name__ == "__main__":  # python -m bench.eval.report bench/results/eval-<name>.json
    import sys

    for path in sys.argv[1:]:
        print(rewrite_markdown(Path(path)))
