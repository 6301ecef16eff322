"""bench/serve.py's pure parts: percentiles, the bounded load loop's stopping rules, and the report
(targets met / not met, the markdown), with a scripted clock and fake senders: nothing is timed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from loadgen import LoadResult, percentiles_ms, run_load, summarize_load  # noqa: E402
from serve_report import summarize, write_markdown  # noqa: E402


class StepClock:
    """A clock that moves only when a sender advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_percentiles_match_numpy_and_are_in_ms():
    latencies = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    got = percentiles_ms(latencies)
    assert got["p50"] == pytest.approx(50.5)
    assert got["p95"] == pytest.approx(float(np.percentile(np.arange(1, 101), 95)))
    assert got["p99"] == pytest.approx(99.01)
    assert percentiles_ms([]) == {"p50": None, "p95": None, "p99": None}


def test_load_stops_on_request_count():
    sent = []

    async def send(index):
        sent.append(index)
        await asyncio.sleep(0)
        return None

    result = asyncio.run(run_load(send, concurrency=4, max_requests=10, max_seconds=1e9))
    assert sorted(sent) == list(range(10))
    assert len(result.latencies_s) == 10 and result.stopped_by == "count" and result.cancelled == 0


def test_load_stops_on_time_and_cancels_what_is_in_flight():
    clock = StepClock()
    started = []

    async def send(index):
        started.append(index)
        clock.now += 1.0  # each request "takes" one second of the scripted clock
        await asyncio.sleep(0)
        return None

    result = asyncio.run(run_load(send, concurrency=1, max_requests=1000, max_seconds=5.0, clock=clock))
    assert result.stopped_by == "time"
    assert len(started) == 5 and len(result.latencies_s) == 5
    assert result.latencies_s == [1.0] * 5

    async def hang(index):
        await asyncio.Event().wait()  # never answers: only the real time limit can end this

    stuck = asyncio.run(run_load(hang, concurrency=3, max_requests=1000, max_seconds=0.05))
    assert stuck.stopped_by == "time" and stuck.cancelled == 3 and stuck.latencies_s == []


def test_failures_are_counted_by_label_not_timed():
    async def send(index):
        return 429 if index % 2 else None

    result = asyncio.run(run_load(send, concurrency=2, max_requests=6, max_seconds=1e9))
    assert len(result.latencies_s) == 3 and result.failures == {"429": 3}
    row = summarize_load(LoadResult(latencies_s=[0.01, 0.02], failures={"429": 1}, wall_s=2.0, stopped_by="count"),
                         texts_per_request=32)
    assert row["requests_per_s"] == 1.0 and row["texts_per_s"] == 32.0 and row["p50"] == pytest.approx(15.0)


def test_load_rejects_unbounded_settings():
    async def send(index):
        return None

    for kwargs in ({"max_requests": 0, "max_seconds": 1.0}, {"max_requests": 5, "max_seconds": 0}):
        with pytest.raises(ValueError):
            asyncio.run(run_load(send, concurrency=1, **kwargs))


def _load(rps, p50, p99, texts=1):
    return {"requests_ok": 100, "failures": {}, "cancelled_at_deadline": 0, "wall_s": 100 / rps,
            "stopped_by": "count", "requests_per_s": rps, "texts_per_s": rps * texts, "p50": p50, "p95": p99,
            "p99": p99, "client_cpu_s": 1.0, "server_cpu_s": 2.0, "client_cpu_ms_per_request": 1.0,
            "check": {"ok": True, "vectors": texts, "dim": 384}}


def _raw(bgeort_64_rps, bgeort_1_p50):
    servers = {
        "bgeort": {"info": None, "loads": {"sentence": {"1": _load(200, bgeort_1_p50, 6.0),
                                                        "64": _load(bgeort_64_rps, 60.0, 90.0)}}},
        "st": {"info": None, "loads": {"sentence": {"1": _load(100, 8.0, 12.0), "64": _load(100, 600.0, 700.0)}}},
        "infinity": {"info": None, "loads": {"sentence": {"64": _load(400, 150.0, 200.0)}}},
        "infinity-fp32": {"error": "infinity-fp32 exited (1) before it was ready; see serve-infinity-fp32.log"},
    }
    baseline = {"precision": "int8", "per_request": {"sentence": {"latencies_s": [0.004] * 9, "texts_per_request": 1}},
                "one_call": {"texts": 1024, "seconds_all": [1.0], "texts_per_s": 1000.0}}
    env = {"cpu_model": "test CPU", "cores_usable": 2, "memory_gib": 8, "cpu_flags": ["avx2"],
           "load_average_start": (0.0, 0.0, 0.0), "versions": {"bgeort": "0.1.0"}}
    return {"command": "python bench/serve.py", "size": "full", "threads": 2, "concurrency": [1, 64],
            "settings": {"sentence": (8.0, 4000), "passages": (20.0, 400), "texts": 1024, "passage_pool": 256},
            "environment": env, "baseline": baseline, "servers": servers, "load_average_end": (0.0, 0.0, 0.0),
            "wall_seconds": 60.0}


def test_targets_met_and_not_met():
    by_name = {t["target"]: t for t in summarize(_raw(bgeort_64_rps=900, bgeort_1_p50=5.0))["targets"]}
    vs_st = by_name["one-sentence requests, 64 clients: bgeort vs st throughput"]
    assert vs_st["value"] == pytest.approx(9.0) and vs_st["met"] is True
    vs_inf = by_name["one-sentence requests, 64 clients: bgeort vs infinity throughput"]
    assert vs_inf["value"] == pytest.approx(2.25) and vs_inf["met"] is True
    assert by_name["one-sentence requests, 64 clients: bgeort p99 below st's"]["met"] is True
    missing = by_name["one-sentence requests, 64 clients: bgeort vs infinity-fp32 throughput"]
    assert missing["met"] is None and missing["measured"] is None  # a server that did not run decides nothing
    single = by_name["one-sentence requests, 1 client: bgeort p50 vs `Embedder.encode` in-process p50"]
    assert single["value"] == pytest.approx(1.25) and single["met"] is True
    share = by_name["one-sentence requests, 64 clients: bgeort serve texts/s vs one big `Embedder.encode` call"]
    assert share["value"] == pytest.approx(0.9) and share["met"] is True

    worse = {t["target"]: t for t in summarize(_raw(bgeort_64_rps=300, bgeort_1_p50=6.0))["targets"]}
    assert worse["one-sentence requests, 64 clients: bgeort vs st throughput"]["met"] is False
    assert worse["one-sentence requests, 64 clients: bgeort vs infinity throughput"]["met"] is False
    assert worse["one-sentence requests, 1 client: bgeort p50 vs `Embedder.encode` in-process p50"]["met"] is False
    assert worse["one-sentence requests, 64 clients: bgeort serve texts/s vs one big "
                 "`Embedder.encode` call"]["met"] is False


def test_markdown_names_targets_servers_and_failures(tmp_path):
    raw = _raw(bgeort_64_rps=300, bgeort_1_p50=5.0)
    path = tmp_path / "serve.md"
    write_markdown(summarize(raw), raw, path)
    text = path.read_text()
    assert "| one-sentence requests, 64 clients: bgeort vs st throughput | >= 8.0x | 300 / 100 req/s = 3.00x | **no** |" \
        in text
    assert "| bgeort | sentence | 64 | 300.0 | 300 |" in text
    assert "infinity-fp32 | did not run: infinity-fp32 exited (1)" in text
    assert "SMOKE" not in text
    raw["size"] = "quick"
    write_markdown(summarize(raw), raw, path)
    assert "SMOKE RUN, not a result" in path.read_text()
