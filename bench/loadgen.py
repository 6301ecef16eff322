"""bench/serve.py's load generator: N concurrent clients on one asyncio loop, bounded in request
count and in time, stopping by themselves. The loop (`run_load`) takes any `send` coroutine, so
its stopping rules are tested without a server (tests/test_serve_bench.py); `aiohttp_sender`
is the light HTTP client it runs with in the benchmark (pre-encoded bodies, one keep-alive pool).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """What one bounded load produced: latencies of the requests that succeeded, the failures by
    status, the requests still in flight at the time limit (cancelled), and the wall time."""

    latencies_s: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    wall_s: float = 0.0
    stopped_by: str = ""  # "count" or "time"


def percentiles_ms(latencies_s, qs=(50, 95, 99)) -> dict[str, float | None]:
    """p50/p95/p99 in ms (numpy's linear interpolation); None for an empty list."""
    if len(latencies_s) == 0:
        return {f"p{q}": None for q in qs}
    values = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1000, qs)
    return {f"p{q}": float(v) for q, v in zip(qs, values)}


def summarize_load(result: LoadResult, *, texts_per_request: int) -> dict:
    ok = len(result.latencies_s)
    wall = result.wall_s or float("nan")
    return {"requests_ok": ok, "failures": dict(result.failures), "cancelled_at_deadline": result.cancelled,
            "wall_s": result.wall_s, "stopped_by": result.stopped_by, "requests_per_s": ok / wall,
            "texts_per_s": ok * texts_per_request / wall, **percentiles_ms(result.latencies_s)}


async def run_load(send, *, concurrency: int, max_requests: int, max_seconds: float,
                   clock=time.perf_counter) -> LoadResult:
    """`concurrency` clients, each sending request i (0, 1, 2, ... shared among them) and waiting for
    its answer before the next, until `max_requests` were started or `max_seconds` passed. At the time
    limit, requests still in flight are cancelled and counted, so the loop always ends within about
    `max_seconds`. `send(i)` returns None on success or a failure label (e.g. the HTTP status)."""
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError("concurrency, max_requests and max_seconds must be positive")
    result = LoadResult()
    started = clock()
    next_index = 0

    async def client():
        nonlocal next_index
        while next_index < max_requests and clock() - started < max_seconds:
            index, next_index = next_index, next_index + 1
            sent = clock()
            failure = await send(index)
            if failure is None:
                result.latencies_s.append(clock() - sent)
            else:
                result.failures[str(failure)] = result.failures.get(str(failure), 0) + 1

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    remaining = max(max_seconds - (clock() - started), 0.0)
    done, pending = await asyncio.wait(tasks, timeout=remaining)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a client that raised (not a failed request: a bug) surfaces here
    result.cancelled = len(pending)
    result.wall_s = clock() - started
    result.stopped_by = "count" if next_index >= max_requests and not pending else "time"
    return result


def aiohttp_sender(session, url: str, bodies: list[bytes]):
    """send(i): POST bodies[i % len(bodies)] as JSON, read the whole answer, return None on 200 or
    the status. The answer is read, not parsed: parsing 32 x 384 floats would cost the client more
    than the server's JSON encoding (the driver checks a sample of answers in full instead)."""
    import aiohttp

    headers = {"Content-Type": "application/json"}

    async def send(index: int):
        try:
            async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as response:
                await response.read()
                return None if response.status == 200 else response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return type(exc).__name__

    return send
