"""The server benchmark of issue 17: `bgeort serve` against a minimal sentence-transformers FastAPI
server and infinity-emb (optimum engine, quantized file preferred and not), one at a time on the
same cores and threads, loaded over 127.0.0.1 by bench/loadgen.py at 1, 16 and 64 clients with
one-sentence requests (STS-B) and 32-passage requests (SciFact); plus the in-process baselines
(bench/serve_baseline.py). bge-small shape (random weights), int8 for bgeort, 2 threads.

    python bench/serve.py            # the full run, est. 10-15 minutes on 2 quiet cores
    python bench/serve.py --quick    # a smoke run; writes to bench/results/tmp/quick
    python bench/serve.py --servers bgeort,st --bgeort-python /path/to/venv/bin/python

Writes serve.json and serve.md to --out. Every load is bounded in requests and seconds; the
benchmark measures and reports, it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from corpora import scifact_texts, stsb_pairs  # noqa: E402
from environment import describe_environment, save_results  # noqa: E402
from loadgen import aiohttp_sender, run_load, summarize_load  # noqa: E402
from make_models import DEFAULT_ROOT, st_int8_file  # noqa: E402
from serve_report import SERVERS, summarize, write_markdown  # noqa: E402

WORKLOADS = {"sentence": 1, "passages": 32}  # texts per request
MAX_CLIENTS = {"passages": 16}  # per workload, the most concurrent clients loaded
SETTINGS = {  # per (workload): seconds and requests per concurrency level, full and quick
    # passages: a 32-passage request is seconds of work on 2 AVX2 cores, so 40 s and at most 16 clients
    # (64 would queue minutes of work that the time limit cuts; the sentence loads carry the targets)
    "full": {"sentence": (8.0, 4000), "passages": (40.0, 400), "texts": 1024, "passage_pool": 256},
    "quick": {"sentence": (2.0, 500), "passages": (6.0, 40), "texts": 256, "passage_pool": 64},
}
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0


def log(message: str) -> None:
    print(f"[serve-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_requests(size: str) -> dict[str, list[list[str]]]:
    """One-sentence requests over the first N unique STS-B test sentences; 32-passage requests over
    a seeded sample of SciFact abstracts (the CPU bench's corpora, bench/corpora.py)."""
    import numpy as np

    first, second, _ = stsb_pairs()
    sentences = list(dict.fromkeys(first + second))[: SETTINGS[size]["texts"]]
    abstracts = scifact_texts()
    pool = SETTINGS[size]["passage_pool"]
    sample = [abstracts[i] for i in np.random.default_rng(0).choice(len(abstracts), pool, replace=False)]
    per = WORKLOADS["passages"]
    return {"sentence": [[s] for s in sentences], "passages": [sample[i:i + per] for i in range(0, pool, per)]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_infinity_folder(models: Path) -> Path:
    """infinity's folder: the sentence-transformers files, with exactly two graphs at its top level,
    model.onnx and sentence-transformers' own int8 export as model_quantized.onnx (infinity prefers a
    name with "quantize" in it, and otherwise takes the last .onnx it globs). Top level, because
    infinity 0.0.78 hands optimum the path it globbed as `file_name` and optimum 2.1 matches that
    against bare file names: started inside the folder with --model-id ".", the two agree."""
    src, folder = models / "src", models / "infinity"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for path in src.iterdir():
        if path.name != "onnx":
            (folder / path.name).symlink_to(path.resolve())
    shutil.copy(src / "onnx" / "model.onnx", folder / "model.onnx")
    shutil.copy(src / st_int8_file(), folder / "model_quantized.onnx")
    return folder


def server_env(threads: int, repo: Path = REPO) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(repo)}


def server_command(name: str, port: int, args) -> tuple[list[str], str]:
    """The command that starts a server and the route it takes embeddings on."""
    models = args.models / "bge-small"
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if name.startswith("bgeort"):
        spin = {"bgeort-nospin": ["--no-spinning"], "bgeort-spin": ["--spinning", "on"]}.get(name, [])
        return [args.bgeort_python, "-m", "bgeort", "serve", str(models / "bgeort"), *host,
                "--threads", str(args.threads), *spin], "/v1/embeddings"
    if name == "st":
        return [sys.executable, str(HERE / "st_server.py"), str(models / "src"), *host,
                "--threads", str(args.threads)], "/v1/embeddings"
    if name.startswith("infinity"):
        command = [str(args.infinity_venv / "bin" / "infinity_emb"), "v2", "--model-id", ".",
                   "--engine", "optimum", "--device", "cpu", "--batch-size", "32", *host]
        if name == "infinity-fp32":
            command.append("--onnx-do-not-prefer-quantized")
        return command, "/embeddings"
    raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def start_server(name: str, args) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    command, route = server_command(name, port, args)
    log_file = open(args.log_dir / f"serve-{name}.log", "w")
    env, cwd = server_env(args.threads), REPO
    if name.startswith("bgeort"):
        env, cwd = server_env(args.threads, args.bgeort_repo), args.bgeort_repo
    if name.startswith("infinity"):
        # run inside its folder (write_infinity_folder says why); infinity caches its optimized graph
        # under the hub cache by that path and reuses any it finds, whichever file it came from, so
        # each variant gets a fresh folder and an empty cache and neither runs the other's graph.
        cwd = write_infinity_folder(args.models / "bge-small")
        cache = HERE / "results" / "tmp" / "infinity-cache" / name
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        env.update(HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"))
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                               cwd=cwd, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}) before it was ready; see {log_file.name}")
        if get(base + "/health", timeout=2.0)[0] == 200:
            return process, base, route
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S:.0f} s; see {log_file.name}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, *, max_seconds: float = 150.0, busy_cores: float = 0.3, window_s: float = 0.5) -> float:
    """Wait until the server uses under `busy_cores` (work of requests cut at a time limit that it did
    not drop, as a plain FastAPI route does not), at most `max_seconds`; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        before = cpu_seconds(pid)
        time.sleep(window_s)
        if (cpu_seconds(pid) - before) / window_s < busy_cores:
            break
    return time.monotonic() - started


def check_answer(body: bytes, texts: int) -> dict:
    """A sample answer in full: the OpenAI shape, one vector per text, and its width."""
    answer = json.loads(body)
    data = answer.get("data", [])
    return {"vectors": len(data), "dim": len(data[0]["embedding"]) if data else None,
            "indices_in_order": [d.get("index") for d in data] == list(range(len(data))),
            "usage": answer.get("usage"), "ok": len(data) == texts}


async def check_first(session, url: str, body: bytes, texts: int) -> dict:
    import aiohttp

    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as first:
            if first.status != 200:
                return {"ok": False, "status": first.status}
            return check_answer(await first.read(), texts)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__} (limit {REQUEST_TIMEOUT_S:.0f} s)"}


async def load_server(process, url: str, bodies: dict[str, list[bytes]], args) -> dict:
    import aiohttp

    out = {}
    for workload, encoded in bodies.items():
        seconds, requests = SETTINGS[args.size][workload]
        out[workload] = {}
        for concurrency in [c for c in args.concurrency if c <= MAX_CLIENTS.get(workload, c)]:
            connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                send = aiohttp_sender(session, url, encoded)
                if concurrency == args.concurrency[0]:  # one answer checked in full, then a warm-up
                    wait_idle(process.pid)
                    check = await check_first(session, url, encoded[0], WORKLOADS[workload])
                    await run_load(send, concurrency=1, max_requests=3, max_seconds=seconds)
                idle_wait_s = wait_idle(process.pid)
                client_cpu, server_cpu = time.process_time(), cpu_seconds(process.pid)
                result = await run_load(send, concurrency=concurrency, max_requests=requests, max_seconds=seconds)
                client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(process.pid) - server_cpu
            row = summarize_load(result, texts_per_request=WORKLOADS[workload])
            row.update(client_cpu_s=client_cpu, server_cpu_s=server_cpu, check=check, idle_wait_s=idle_wait_s,
                       client_cpu_ms_per_request=1000 * client_cpu / max(row["requests_ok"], 1))
            out[workload][str(concurrency)] = row
            log(f"  {workload} x{concurrency}: {row['requests_per_s']:.1f} req/s, p50 {row['p50'] or 0:.1f} ms, "
                f"p99 {row['p99'] or 0:.1f} ms, client {client_cpu / result.wall_s:.2f} cores, "
                f"server {server_cpu / result.wall_s:.2f} cores, failures {row['failures']}")
    return out


def run_baseline(requests_file: Path, args) -> dict:
    log("in-process baselines (bench/serve_baseline.py)")
    command = [args.bgeort_python, str(HERE / "serve_baseline.py"), str(args.models / "bge-small" / "bgeort"),
               "--requests", str(requests_file), "--threads", str(args.threads),
               "--rounds", "1" if args.quick else "3", "--max-requests", "50" if args.quick else "200"]
    done = subprocess.run(command, capture_output=True, text=True, env=server_env(args.threads, args.bgeort_repo),
                          cwd=args.bgeort_repo, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"serve_baseline.py failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def versions_of(python: str, names: tuple[str, ...]) -> dict:
    code = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps(out))")
    try:
        done = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60)
        return json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run; results go to bench/results/tmp/quick")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated from {', '.join(SERVERS)}")
    parser.add_argument("--concurrency", default="1,16,64", help="client counts (default 1,16,64)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads of every server (default 2)")
    parser.add_argument("--bgeort-python", default=sys.executable,
                        help="the Python whose bgeort runs the server and the baselines (default this one)")
    parser.add_argument("--bgeort-repo", type=Path, default=REPO,
                        help="the checkout whose bgeort that Python imports (cwd and PYTHONPATH; default this one)")
    parser.add_argument("--infinity-venv", type=Path, default=REPO / ".venv-infinity",
                        help="venv made by bench/infinity_venv.sh (default .venv-infinity)")
    parser.add_argument("--models", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.size = "quick" if args.quick else "full"
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.out = args.out or (HERE / "results" / "tmp" / "quick" if args.quick else HERE / "results")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # a SIGTERM (e.g. from `timeout`) unwinds through the finally that stops the server under test
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_dir = HERE / "results" / "tmp" / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(HERE / "make_models.py"), "--root", str(args.models), "--only", "bge-small"],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    requests = build_requests(args.size)
    requests_file = HERE / "results" / "tmp" / f"serve-requests-{args.size}.json"
    requests_file.write_text(json.dumps(requests))
    bodies = {w: [json.dumps({"input": texts, "model": "bge-small", "encoding_format": "float"}).encode()
                  for texts in requests[w]] for w in WORKLOADS}
    environment = describe_environment([args.threads])
    environment["versions_infinity_venv"] = versions_of(
        str(args.infinity_venv / "bin" / "python"),
        ("infinity-emb", "torch", "optimum", "optimum-onnx", "transformers", "sentence-transformers", "onnxruntime",
         "numpy", "pandas", "fastapi", "uvicorn")) if any(s.startswith("infinity") for s in args.server_list) else {}
    environment["bgeort_repo"] = str(args.bgeort_repo)
    environment["versions_bgeort_python"] = versions_of(args.bgeort_python, ("bgeort", "onnxruntime", "starlette",
                                                                             "fastapi", "uvicorn", "numpy"))
    for name in ("aiohttp", "fastapi", "uvicorn"):
        environment["versions"][name] = versions_of(sys.executable, (name,)).get(name)
    baseline = run_baseline(requests_file, args)
    servers = {}
    for name in args.server_list:
        log(f"{name}: starting")
        try:
            process, base, route = start_server(name, args)
        except RuntimeError as exc:
            log(f"{name}: {exc}")
            servers[name] = {"error": str(exc)}
            continue
        try:
            info = get(base + "/info")
            servers[name] = {"info": json.loads(info[1]) if info[0] == 200 else None,
                             "loads": asyncio.run(load_server(process, base + route, bodies, args))}
        except Exception as exc:  # noqa: BLE001 - one server failing must not lose the others' rows
            log(f"{name}: load failed: {exc!r}")
            servers[name] = {"error": repr(exc)}
        finally:
            stop_server(process)
    raw = {"command": " ".join(["python", "bench/serve.py", *(sys.argv[1:] if argv is None else argv)]),
           "size": args.size, "threads": args.threads, "concurrency": args.concurrency,
           "settings": SETTINGS[args.size], "workloads": WORKLOADS, "environment": environment,
           "baseline": baseline, "servers": servers, "load_average_end": os.getloadavg(),
           "wall_seconds": time.time() - started}
    summary = summarize(raw)
    report = save_results(args.out, "serve", summary, raw, write_markdown)
    log(f"done in {raw['wall_seconds'] / 60:.1f} min: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
