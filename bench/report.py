"""Turn cpu.py's raw measurements into figures, target checks, a markdown table and a chart."""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from peers import BGEORT_SHIPPED

# bge-small-en-v1.5: 12 layers, hidden 384, FFN 1536. Multiply-adds count 2 FLOPs.
LAYERS, HIDDEN, FFN = 12, 384, 1536
GEMM_FLOPS_PER_TOKEN = 2 * LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # 42.5 M
ATTENTION_FLOPS_PER_TOKEN_PER_POSITION = 4 * LAYERS * HIDDEN  # QK^T and AV: 18.4 k x sequence length
CORPUS_LABELS = {"short": "short (STS-B)", "rag": "RAG chunks (SciFact)", "mix": "long-tailed mix"}


def corpus_flops(lengths) -> float:
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(GEMM_FLOPS_PER_TOKEN * lengths.sum() + ATTENTION_FLOPS_PER_TOKEN_PER_POSITION * (lengths ** 2).sum())


def percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if values else None


def cosine_to(reference, vectors) -> float:
    a, b = np.asarray(reference), np.asarray(vectors)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def summarize(raw: dict) -> dict:
    lengths = raw["token_lengths"]
    peers = raw["peers"]
    per_threads = {}
    for threads, result in raw["throughput"].items():
        peak = raw["gemm"][threads]["peak_gflops"]
        reference = result.get("bgeort-fp32", {}).get("check_vectors")
        rows = {}
        for peer in peers:
            if peer not in result:
                continue
            measured = result[peer]
            hello = measured["hello"]
            row = {"corpora": {}, "latency_ms_p50": None, "latency_ms_p95": None}
            for corpus, seconds in measured["runs"].items():
                if not seconds:
                    continue
                median = statistics.median(seconds)
                gflops = corpus_flops(lengths[corpus]) / median / 1e9
                row["corpora"][corpus] = {
                    "seconds_median": median, "seconds_all": seconds,
                    "texts_per_s": len(lengths[corpus]) / median,
                    "tokens_per_s": float(np.sum(lengths[corpus])) / median,
                    "gflops": gflops, "fraction_of_gemm_peak": gflops / peak}
            latency = [s * 1000 for s in measured["latency"]]
            row["latency_ms_p50"] = percentile(latency, 50)
            row["latency_ms_p95"] = percentile(latency, 95)
            row["peak_rss_mb"] = measured.get("peak_rss", 0) / 2**20
            row["ort_import_s"] = hello["ort_import_s"]
            row["library_import_s"] = hello["library_import_s"]
            row["open_s"] = hello["open_s"]
            row["info"] = hello["info"]
            row["min_cosine_to_bgeort_fp32"] = cosine_to(reference, measured["check_vectors"]) if reference else None
            rows[peer] = row
        per_threads[threads] = {"gemm_peak_gflops": peak, "peers": rows}
    quality = {peer: q["spearman"] for peer, q in raw["quality"].items()}
    best = best_precision(quality)
    return {"per_threads": per_threads, "quality_stsb_spearman": quality, "best_bgeort": best,
            "targets": targets(per_threads, raw, quality, best), "rss_passes": rss_summary(raw["rss_passes"])}


def best_precision(quality: dict) -> str:
    """int8 when its STS-B score is within 0.5 points of fp32 (or quality was not measured)."""
    if "bgeort-int8" not in quality or "bgeort-fp32" not in quality:
        return "bgeort-int8"
    return "bgeort-int8" if quality["bgeort-fp32"] - quality["bgeort-int8"] <= 0.5 else "bgeort-fp32"


def rss_summary(passes: dict) -> dict:
    out = {}
    for peer, data in passes.items():
        rss = [r / 2**20 for r in data["rss"]]
        peak = max(data["peak_rss"]) / 2**20
        model_mb = (data["model_bytes"] or 0) / 2**20
        out[peer] = {"rss_mb_per_pass": rss, "peak_rss_mb": peak, "model_mb": model_mb,
                     "growth_after_first_pass_mb": max(rss) - rss[0] if rss else None,
                     "limit_mb": model_mb + 300}
    return out


def _ratio_target(name, rows, best, peer, corpus, want):
    mine = rows.get(best, {}).get("corpora", {}).get(corpus)
    theirs = rows.get(peer, {}).get("corpora", {}).get(corpus)
    if not mine or not theirs:
        return {"target": name, "want": f">= {want}x", "measured": None, "met": None}
    ratio = mine["texts_per_s"] / theirs["texts_per_s"]
    return {"target": name, "want": f">= {want}x", "measured": f"{ratio:.2f}x", "value": ratio, "met": ratio >= want}


def targets(per_threads: dict, raw: dict, quality: dict, best: str) -> list[dict]:
    threads = "2" if "2" in per_threads else max(per_threads, key=int)
    rows = per_threads[threads]["peers"]
    out = []
    # the default export's best precision, then the opt-in calibrated int8 exports when their quality passes
    candidates = [best] + [p for p in ("bgeort-int8-lnstatic", "bgeort-int8-static") if p in rows and p in quality
                           and "bgeort-fp32"
                           in quality and quality["bgeort-fp32"] - quality[p] <= 0.5]
    for candidate in candidates:
        for corpus, pairs in (("short", (("st-torch", 5), ("fastembed", 5), ("st-onnx-int8", 3))),
                              ("rag", (("st-torch", 2.5), ("fastembed", 2.5), ("st-onnx-int8", 1.5)))):
            for peer, want in pairs:
                out.append(_ratio_target(f"{corpus}: {candidate} vs {peer} (texts/s, {threads} threads)", rows,
                                         candidate, peer, corpus, want))
        mine, fast = rows.get(candidate, {}).get("latency_ms_p50"), rows.get("fastembed", {}).get("latency_ms_p50")
        if mine and fast:
            out.append({"target": f"single short query p50: {candidate} vs fastembed", "want": "<= 0.5x",
                        "measured": f"{mine:.1f} ms vs {fast:.1f} ms = {mine / fast:.2f}x", "value": mine / fast,
                        "met": mine / fast <= 0.5})
    fp32 = rows.get("bgeort-fp32", {}).get("corpora", {}).get("rag")
    if fp32:
        peak = per_threads[threads]["gemm_peak_gflops"]
        out.append({"target": "bgeort fp32 GFLOP/s on real tokens (RAG chunks) vs measured fp32 GEMM peak",
                    "want": ">= 70%", "measured": f"{fp32['gflops']:.0f} / {peak:.0f} GFLOP/s = "
                    f"{100 * fp32['fraction_of_gemm_peak']:.0f}%", "value": fp32["fraction_of_gemm_peak"],
                    "met": fp32["fraction_of_gemm_peak"] >= 0.70})
    for peer, data in rss_summary(raw["rss_passes"]).items():
        flat = data["growth_after_first_pass_mb"] is not None and data["growth_after_first_pass_mb"] <= 16
        out.append({"target": f"{peer}: RSS flat over {len(data['rss_mb_per_pass'])} passes of the chunks "
                    "and peak <= model + 300 MB", "want": f"growth <= 16 MB, peak <= {data['limit_mb']:.0f} MB",
                    "measured": f"growth {data['growth_after_first_pass_mb']:.0f} MB, peak {data['peak_rss_mb']:.0f} MB",
                    "met": flat and data["peak_rss_mb"] <= data["limit_mb"]})
    for peer in BGEORT_SHIPPED:
        row = rows.get(peer)
        if row:
            added = row["library_import_s"] + row["open_s"]
            out.append({"target": f"`import bgeort` + opening {peer} on top of importing onnxruntime",
                        "want": "<= 0.5 s", "measured": f"{row['library_import_s']:.2f} + {row['open_s']:.2f} = "
                        f"{added:.2f} s", "value": added, "met": added <= 0.5})
    for peer in ("bgeort-int8", "bgeort-int8-lnstatic", "bgeort-int8-static"):
        if peer in quality and "bgeort-fp32" in quality:
            drop = quality["bgeort-fp32"] - quality[peer]
            out.append({"target": f"{peer} STS-B Spearman (MiniLM) within 0.5 points of fp32", "want": "<= 0.5",
                        "measured": f"{quality[peer]:.2f} vs {quality['bgeort-fp32']:.2f} (drop {drop:.2f})",
                        "value": drop, "met": drop <= 0.5})
    return out


def _fmt(value, spec=".0f", missing="–"):
    return missing if value is None else format(value, spec)


def isa_lines(env: dict) -> list[str]:
    """The instruction-set mask a run used (bench/isa.py), and what the workers' libraries saw under it."""
    if env.get("isa", "native") == "native":
        return []
    seen = env.get("isa_probe") or {}
    return [f"- Instruction set: **{env['isa'].upper()} only**. Every measured process ran with cpuid hiding "
            "AVX-512, VNNI (AVX-512 and AVX) and AMX (`bench/isa.py`, LD_PRELOAD of `bench/isa_mask.c`): this "
            "machine's cores running the kernels each library picks on an AVX2 + FMA CPU without VNNI, which "
            "stands in for that CPU class's instruction set, not for its clocks or caches. What the workers saw: "
            f"numpy AVX512F {seen.get('numpy', {}).get('AVX512F')}, OpenBLAS kernel {', '.join(seen.get('blas', []))}, "
            f"PyTorch {seen.get('torch')}, onnxruntime's u8 x s8 GEMM with full-range 8-bit weights "
            + {True: "exact (a VNNI or widening kernel).", False: "inexact (AVX2's saturating 16-bit kernel, as "
               "on such a CPU; bgeort's 7-bit weights stay exact there)."}.get(seen.get("onnxruntime_u8s8_8bit_exact"),
                                                                               "not probed.")]


def write_markdown(summary: dict, raw: dict, path: Path) -> None:
    env = raw["environment"]
    lines = [
        "# bgeort CPU benchmark (issue 4)" + ("" if env.get("isa", "native") == "native" else
                                              f", {env['isa'].upper()} instruction set"), "",
        f"Made by `{raw['command']}` (`make bench{'' if env.get('isa', 'native') == 'native' else '-' + env['isa']}` "
        "runs the full one) on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {raw['size']} corpora, "
        f"{raw['rounds']} interleaved round(s), wall {raw['wall_seconds'] / 60:.1f} min. "
        "Throughput figures are medians over rounds; peers run in their own processes, interleaved "
        "(A B A B), with the same thread budget.", "",
        f"- CPU: {env['cpu_model']}, {env['cores_usable']} usable cores, {env['memory_gib']} GiB; flags: "
        f"{' '.join(env['cpu_flags'])}",
        *isa_lines(env),
        f"- Load average at start {tuple(round(x, 2) for x in env['load_average_start'])}, at end "
        f"{tuple(round(x, 2) for x in raw['load_average_end'])} (anything above 0 is someone else's work)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "- Environment at start: " + (", ".join(f"{k}={v}" for k, v in env["env_at_start"].items() if v is not None)
                                      or "none of " + ", ".join(env["env_at_start"]) + " set"),
        f"- Per worker: {env['env_set_per_worker']}; GEMM peak: {env['env_gemm']}",
        f"- Model: bge-small-en-v1.5's shape (12 x 384, 12 heads, FFN 1536, vocab 30522), random weights, real "
        f"uncased tokenizer, max length 512 for every peer. Quality columns: the real all-MiniLM-L6-v2 (max length 256).",
        f"- FLOPs: {GEMM_FLOPS_PER_TOKEN / 1e6:.1f} MFLOP/token of GEMM + "
        f"{ATTENTION_FLOPS_PER_TOKEN_PER_POSITION / 1e3:.1f} kFLOP x length for attention, on real (unpadded) tokens.",
        "",
        "| corpus | texts | real tokens | mean | p50 | p90 | max |", "|---|---:|---:|---:|---:|---:|---:|"]
    for corpus, lengths in raw["token_lengths"].items():
        arr = np.asarray(lengths)
        lines.append(f"| {CORPUS_LABELS[corpus]} | {len(arr)} | {arr.sum()} | {arr.mean():.0f} | "
                     f"{np.percentile(arr, 50):.0f} | {np.percentile(arr, 90):.0f} | {arr.max()} |")
    lines += ["", "## Targets", "", f"Best bgeort precision whose quality passes: **{summary['best_bgeort']}**.", "",
              "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in summary["targets"]:
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['target']} | {t['want']} | {t['measured'] or 'not measured'} | {met} |")
    lines += ["", "## fp32 GEMM peak (numpy)", "", "| threads | " + " | ".join(
        next(iter(raw["gemm"].values()))["gflops"]) + " | peak | BLAS |", "|---|" + "---:|" * (
        len(next(iter(raw["gemm"].values()))["gflops"]) + 1) + "---|"]
    for threads, gemm in raw["gemm"].items():
        blas = "; ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in gemm["blas"])
        lines.append(f"| {threads} | " + " | ".join(f"{v:.0f}" for v in gemm["gflops"].values())
                     + f" | {gemm['peak_gflops']:.0f} | {blas} |")
    quality = summary["quality_stsb_spearman"]
    for threads, block in summary["per_threads"].items():
        lines += ["", f"## {threads} thread(s)", "",
                  "| peer | short texts/s | short tok/s | RAG texts/s | RAG tok/s | mix texts/s | mix tok/s | "
                  "RAG GFLOP/s (% peak) | query p50 / p95 ms | peak RSS MB | import + open s | min cos vs bgeort-fp32 "
                  "| STS-B (MiniLM) |", "|---|" + "---:|" * 12]
        for peer, row in block["peers"].items():
            c = row["corpora"]
            cell = lambda corpus, key, spec=".0f": _fmt(c.get(corpus, {}).get(key), spec)  # noqa: E731
            rag = c.get("rag")
            flops = f"{rag['gflops']:.0f} ({100 * rag['fraction_of_gemm_peak']:.0f}%)" if rag else "–"
            imports = row["ort_import_s"] + row["library_import_s"]
            lines.append(
                f"| {peer} | {cell('short', 'texts_per_s')} | {cell('short', 'tokens_per_s')} | "
                f"{cell('rag', 'texts_per_s', '.1f')} | {cell('rag', 'tokens_per_s')} | {cell('mix', 'texts_per_s')} | "
                f"{cell('mix', 'tokens_per_s')} | {flops} | {_fmt(row['latency_ms_p50'], '.1f')} / "
                f"{_fmt(row['latency_ms_p95'], '.1f')} | {row['peak_rss_mb']:.0f} | {imports:.2f} + {row['open_s']:.2f} | "
                f"{_fmt(row['min_cosine_to_bgeort_fp32'], '.5f')} | {_fmt(quality.get(peer), '.2f')} |")
    lines += ["", "## RSS over passes of the chunk corpus", "", "| peer | model MB | RSS MB after each pass | peak MB |",
              "|---|---:|---|---:|"]
    for peer, data in summary["rss_passes"].items():
        lines.append(f"| {peer} | {data['model_mb']:.0f} | {' '.join(f'{r:.0f}' for r in data['rss_mb_per_pass'])} | "
                     f"{data['peak_rss_mb']:.0f} |")
    lines += ["", "## Peers", ""]
    first = next(iter(summary["per_threads"].values()))["peers"]
    for peer in raw["peers"]:
        info = first.get(peer, {}).get("info", {})
        lines.append(f"- `{peer}`: {raw['descriptions'].get(peer, peer)}; " + ", ".join(
            f"{k}={v}" for k, v in info.items()))
    lines += ["", "Notes: import time is `import onnxruntime` (not for st-torch) plus the library's import, in a fresh "
              "process; open is building the model object. \"min cos vs bgeort-fp32\" compares the first "
              f"{len(next(iter(raw['throughput'].values()))['bgeort-fp32']['check_vectors'])} RAG chunks' vectors with "
              "bgeort fp32's: 1.0 means the same model and the same truncation (equal work). fastembed's "
              "`truncation_as_loaded` is what it read from the folder; it is re-set to the model's max length before "
              "timing. Nothing here asserts: a missed target is a row with **no**.", ""]
    path.write_text("\n".join(lines))


def write_chart(summary: dict, path: Path, isa: str = "native") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = summary["per_threads"]
    corpora = list(CORPUS_LABELS)
    peers = list(next(iter(blocks.values()))["peers"])
    fig, axes = plt.subplots(1, len(corpora), figsize=(5 * len(corpora), 0.45 * len(peers) + 1.8))
    height = 0.8 / len(blocks)
    for ax, corpus in zip(np.atleast_1d(axes), corpora):
        for index, (threads, block) in enumerate(sorted(blocks.items())):
            values = [block["peers"].get(p, {}).get("corpora", {}).get(corpus, {}).get("texts_per_s", 0) for p in peers]
            y = np.arange(len(peers)) + index * height
            ax.barh(y, values, height=height, label=f"{threads} thread(s)")
            for yy, v in zip(y, values):
                ax.text(v, yy, f" {v:.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(peers)) + height * (len(blocks) - 1) / 2)
        ax.set_yticklabels(peers, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(CORPUS_LABELS[corpus])
        ax.set_xlabel("texts/s (median)")
        ax.margins(x=0.15)  # room for the value labels
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    where = "this CPU" if isa == "native" else f"this CPU, {isa.upper()} instruction set only"
    fig.suptitle(f"bge-small shape on {where}: texts/s, same thread budget for every peer")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
