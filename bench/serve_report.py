"""Turn bench/serve.py's raw measurements into the issue's target checks and a markdown report."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from loadgen import percentiles_ms

SERVERS = ("bgeort", "bgeort-spin", "bgeort-nospin", "st", "infinity", "infinity-fp32")
DESCRIPTIONS = {
    "bgeort": "`python -m bgeort serve` on the bgeort export (int8 on CPU), cross-request batching, its defaults "
              "(onnxruntime's threads spin inside a run and stop when it returns: `--spinning runs`)",
    "bgeort-spin": "the same with `--spinning on` (the threads spin between runs too, the library's default)",
    "bgeort-nospin": "the same with `--no-spinning` (onnxruntime's threads never spin, not even inside a run)",
    "st": "sentence-transformers (PyTorch fp32) behind a minimal FastAPI app, one `model.encode` per request "
          "under a lock (bench/st_server.py)",
    "infinity": "infinity-emb v2, `--engine optimum`, on the sentence-transformers folder (its own ONNX files); "
                "the quantized file preferred (infinity's default)",
    "infinity-fp32": "the same with `--onnx-do-not-prefer-quantized` (onnx/model.onnx, fp32)",
}
BIG = 64  # the concurrency the throughput targets are read at


def _load(raw: dict, server: str, workload: str, concurrency: int) -> dict | None:
    return raw["servers"].get(server, {}).get("loads", {}).get(workload, {}).get(str(concurrency))


def _row(target: str, want: str, measured: str | None, value: float | None, met: bool | None) -> dict:
    return {"target": target, "want": want, "measured": measured, "value": value, "met": met}


def targets(raw: dict, baseline: dict) -> list[dict]:
    out = []
    mine = _load(raw, "bgeort", "sentence", BIG)
    for peer, want in (("st", 8.0), ("infinity", 1.5), ("infinity-fp32", 1.5)):
        theirs = _load(raw, peer, "sentence", BIG)
        name = f"one-sentence requests, {BIG} clients: bgeort vs {peer} throughput"
        if not mine or not theirs or not theirs["requests_per_s"] or not mine["requests_ok"]:
            out.append(_row(name, f">= {want}x", None, None, None))
        else:
            ratio = mine["requests_per_s"] / theirs["requests_per_s"]
            out.append(_row(name, f">= {want}x", f"{mine['requests_per_s']:.0f} / {theirs['requests_per_s']:.0f} "
                            f"req/s = {ratio:.2f}x", ratio, ratio >= want))
        name = f"one-sentence requests, {BIG} clients: bgeort p99 below {peer}'s"
        if not mine or not theirs or mine["p99"] is None or theirs["p99"] is None:
            out.append(_row(name, "lower", None, None, None))
        else:
            out.append(_row(name, "lower", f"{mine['p99']:.1f} vs {theirs['p99']:.1f} ms", mine["p99"] / theirs["p99"],
                            mine["p99"] < theirs["p99"]))
    direct = baseline.get("per_request_p50_ms", {}).get("sentence")
    for server in ("bgeort", "bgeort-spin", "bgeort-nospin"):
        single = _load(raw, server, "sentence", 1)
        name = f"one-sentence requests, 1 client: {server} p50 vs `Embedder.encode` in-process p50"
        if not single or single["p50"] is None or not direct:
            out.append(_row(name, "<= 1.3x", None, None, None))
        else:
            ratio = single["p50"] / direct
            out.append(_row(name, "<= 1.3x", f"{single['p50']:.2f} vs {direct:.2f} ms = {ratio:.2f}x", ratio,
                            ratio <= 1.3))
    one_call = baseline.get("one_call_texts_per_s")
    name = f"one-sentence requests, {BIG} clients: bgeort serve texts/s vs one big `Embedder.encode` call"
    if not mine or not one_call:
        out.append(_row(name, ">= 50%", None, None, None))
    else:
        share = mine["texts_per_s"] / one_call
        out.append(_row(name, ">= 50%", f"{mine['texts_per_s']:.0f} / {one_call:.0f} texts/s = {100 * share:.0f}%",
                        share, share >= 0.5))
    return out


def summarize(raw: dict) -> dict:
    base = raw["baseline"]
    baseline = {"precision": base.get("precision"),
                "per_request_p50_ms": {w: percentiles_ms(r["latencies_s"])["p50"] for w, r in base["per_request"].items()},
                "per_request": {w: percentiles_ms(r["latencies_s"]) for w, r in base["per_request"].items()},
                "one_call_texts_per_s": base["one_call"]["texts_per_s"], "one_call_texts": base["one_call"]["texts"]}
    return {"baseline": baseline, "targets": targets(raw, baseline)}


def _fmt(value, spec=".1f", missing="–"):
    return missing if value is None else format(value, spec)


def write_markdown(summary: dict, raw: dict, path: Path) -> None:
    env = raw["environment"]
    smoke = raw["size"] == "quick"
    lines = [f"# bgeort serve benchmark (issue 17){' — SMOKE RUN, not a result' if smoke else ''}", "",
             f"Made by `{raw['command']}` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
             f"wall {raw['wall_seconds'] / 60:.1f} min. One server at a time on the same cores, "
             f"{raw['threads']} inference threads each, loaded over 127.0.0.1 by bench/loadgen.py "
             "(asyncio + aiohttp, one keep-alive connection per client, pre-encoded bodies, answers read but "
             "not parsed; one answer per setting checked in full) from this same machine.", ""]
    if smoke:
        lines += ["**A --quick smoke run (short loads, small pools), possibly on a shared machine: its numbers "
                  "are not results.**", ""]
    lines += [
        f"- CPU: {env['cpu_model']}, {env['cores_usable']} usable cores, {env['memory_gib']} GiB; flags: "
        f"{' '.join(env['cpu_flags'])}",
        f"- Load average at start {tuple(round(x, 2) for x in env['load_average_start'])}, at end "
        f"{tuple(round(x, 2) for x in raw['load_average_end'])} (anything above 0 is someone else's work)",
        "- Driver versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "- bgeort server's Python: " + ", ".join(f"{k} {v}" for k, v in env.get("versions_bgeort_python", {}).items()
                                                if v),
        "- infinity venv (bench/infinity_venv.sh): " + (", ".join(
            f"{k} {v}" for k, v in env.get("versions_infinity_venv", {}).items() if v) or "not used"),
        f"- Model: bge-small-en-v1.5's shape (12 x 384), random weights, real uncased tokenizer, max length 512. "
        f"In-process baseline precision: {summary['baseline']['precision']}.",
        f"- Loads: one-sentence requests (STS-B test sentences, {raw['settings']['texts']} distinct) and "
        f"32-passage requests (SciFact abstracts, {raw['settings']['passage_pool']} distinct); per setting at most "
        f"{raw['settings']['sentence'][1]} requests / {raw['settings']['sentence'][0]:.0f} s (sentences) and "
        f"{raw['settings']['passages'][1]} / {raw['settings']['passages'][0]:.0f} s (passages), after a warm-up; "
        "requests still in flight at the time limit are cancelled and counted.",
        "", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in summary["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {t['want']} | {t['measured'] or 'not measured'} | {met} |")
    b = summary["baseline"]
    lines += ["", "## In-process baselines (bench/serve_baseline.py)", "",
              "| what | p50 ms | p95 ms | p99 ms | texts/s |", "|---|---:|---:|---:|---:|"]
    for workload, p in b["per_request"].items():
        lines.append(f"| `Embedder.encode` per request, {workload} | {_fmt(p['p50'], '.2f')} | {_fmt(p['p95'], '.2f')} "
                     f"| {_fmt(p['p99'], '.2f')} | |")
    lines.append(f"| one `Embedder.encode` of all {b['one_call_texts']} sentences | | | | "
                 f"{b['one_call_texts_per_s']:.0f} |")
    lines += ["", "## Servers", "", "| server | load | clients | req/s | texts/s | p50 ms | p95 ms | p99 ms | ok | "
              "failed | cut at limit | idle wait s | client cores | client ms/req | server cores | answer checked |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for server, result in raw["servers"].items():
        if "error" in result:
            lines.append(f"| {server} | did not run: {result['error'][:300]} |" + " |" * 14)
            continue
        for workload, by_clients in result["loads"].items():
            for clients, row in by_clients.items():
                check = row["check"]
                checked = f"{check.get('vectors')} x {check.get('dim')}" if check.get("ok") else f"**no** {check}"
                wall = row["wall_s"] or float("nan")
                lines.append(
                    f"| {server} | {workload} | {clients} | {row['requests_per_s']:.1f} | {row['texts_per_s']:.0f} | "
                    f"{_fmt(row['p50'])} | {_fmt(row['p95'])} | {_fmt(row['p99'])} | {row['requests_ok']} | "
                    f"{row['failures'] or ''} | {row['cancelled_at_deadline']} | {row.get('idle_wait_s', 0):.1f} | "
                    f"{row['client_cpu_s'] / wall:.2f} | "
                    f"{row['client_cpu_ms_per_request']:.2f} | {row['server_cpu_s'] / wall:.2f} | {checked} |")
    lines += ["", "## Servers compared", ""]
    for server in raw["servers"]:
        info = raw["servers"][server].get("info")
        lines.append(f"- `{server}`: {DESCRIPTIONS.get(server, server)}" + (f"; /info: {info}" if info else ""))
    lines += ["", "Notes: client cores and server cores are CPU seconds over the load's wall time (the load "
              "generator runs on the same 2 cores, so what it uses is taken from the server). Latency is per "
              "request, from sending the body to reading the whole answer. A load cut at its time limit reports "
              "the latencies of the requests that finished, which understates an overloaded server's tail; the "
              "'cut at limit' column says when that happened, and 'idle wait' how long the server then kept "
              "working on them before the next setting started (at most 150 s). Ratios mean something only within one run. The "
              "benchmark never asserts; a missed target is a row with **no**.", ""]
    path.write_text("\n".join(lines))
