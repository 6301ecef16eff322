"""bgeort serve on 127.0.0.1: the real CLI in a subprocess, checked with the official openai client and
httpx against the library's own results; a gated server in a thread for 429 and client disconnects."""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import bgeort  # noqa: E402

pytestmark = pytest.mark.export

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SENTENCES = ["the cat sat on the mat", "a man is playing guitar", "what is a panda ?", "hello world",
             "the red car is fast", "two dogs eat", "a woman is playing piano on the street", "big house"]
QUERY = "what is a panda ?"
DOCUMENTS = ["the panda is a bear", "hello world", "a cat sat on the mat", "china", "the panda eats"]
MAX_INPUTS, MAX_BODY = 16, 20_000


def wait_for_url(lines: queue.Queue, process, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if "http://127.0.0.1:" in line:
            return line[line.index("http://"):].split()[0]
    raise AssertionError("the server did not print its URL:\n" + "".join(seen))


@pytest.fixture(scope="module")
def server(tiny_model, bert_reranker):
    """`python -m bgeort serve` with an embedder and a reranker, the key from BGEORT_API_KEY."""
    env = dict(os.environ, BGEORT_API_KEY=KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "bgeort", "serve", str(tiny_model), "--reranker", str(bert_reranker), "--port", "0",
         "--threads", "1", "--max-inputs", str(MAX_INPUTS), "--max-body-bytes", str(MAX_BODY)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        url = wait_for_url(lines, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
    output = "".join(lines.queue)
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def embedder(tiny_model):
    with bgeort.Embedder(tiny_model, threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def reranker(bert_reranker):
    with bgeort.Reranker(bert_reranker, threads=1) as model:
        yield model


def client(url: str, **options):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60, **options)


def post(url: str, path: str, body, **options) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=AUTH, timeout=60, **options)


def close(got, want) -> bool:
    return np.abs(np.asarray(got, dtype=np.float32) - want).max() <= 1e-6


def test_startup_line_and_health(server, tiny_model):
    assert httpx.get(server + "/health", timeout=10).json() == {"status": "ok"}  # no key needed


def test_openai_client_base64_and_float(server, embedder):
    api = client(server)
    default = api.embeddings.create(model="tiny-bert", input=SENTENCES)  # the client asks for base64
    floats = api.embeddings.create(model="anything", input=SENTENCES, encoding_format="float")
    want = embedder.encode(SENTENCES)
    for response in (default, floats):
        assert [d.index for d in response.data] == list(range(len(SENTENCES)))
        assert close([d.embedding for d in response.data], want)
        assert response.usage.prompt_tokens == response.usage.total_tokens == int(embedder.token_counts(SENTENCES).sum())
        assert response.model == embedder.path.name
    one = api.embeddings.create(model="m", input="hello world", dimensions=embedder.dim)
    assert close([one.data[0].embedding], embedder.encode(["hello world"]))
    queries = api.embeddings.create(model="m", input=SENTENCES[:3], extra_body={"input_type": "query"})
    assert close([d.embedding for d in queries.data], embedder.encode_queries(SENTENCES[:3]))
    documents = api.embeddings.create(model="m", input=SENTENCES[:3], extra_body={"input_type": "document"})
    assert close([d.embedding for d in documents.data], embedder.encode_corpus(SENTENCES[:3]))
    with pytest.raises(openai.BadRequestError) as refused:
        api.embeddings.create(model="m", input=["hello"], dimensions=8)
    assert refused.value.status_code == 400 and refused.value.body["param"] == "dimensions"
    assert "Matryoshka" in refused.value.body["message"]


def test_float_json_is_the_exact_float32_vector(server):
    """The JSON floats are float32's shortest exact form: they parse back to the very bits base64 sends."""
    api = client(server)
    floats = api.embeddings.create(model="m", input=SENTENCES, encoding_format="float")
    packed = api.embeddings.create(model="m", input=SENTENCES)  # base64, decoded by the client
    for a, b in zip(floats.data, packed.data):
        assert np.array_equal(np.asarray(a.embedding, dtype=np.float32), np.asarray(b.embedding, dtype=np.float32))


def test_json_response_takes_any_numpy_layout():
    from bgeort.server.app import JSONResponse

    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = {"columns": matrix[:, ::2], "scalar": np.float32(0.1), "flags": np.array([True, False]),
            "ids": np.array([3, 1], dtype=np.int64), "plain": [1.5, "x"]}
    assert json.loads(JSONResponse(body).body) == {"columns": [[0, 2], [4, 6], [8, 10]], "scalar": 0.1,
                                                    "flags": [True, False], "ids": [3, 1], "plain": [1.5, "x"]}


@pytest.mark.parametrize("argv,want", [([], "runs"), (["--spinning", "runs"], "runs"), (["--spinning", "off"], False),
                                       (["--no-spinning"], False), (["--spinning", "on"], True)])
def test_spinning_option(argv, want):
    import argparse

    from bgeort.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    got = serve.SPINNING[parser.parse_args(["folder", *argv]).spinning]
    assert got == want and type(got) is type(want)


def test_embeddings_alias_and_embed_route(server, embedder):
    alias = post(server, "/embeddings", {"input": SENTENCES, "encoding_format": "float"})
    assert alias.status_code == 200 and close([d["embedding"] for d in alias.json()["data"]], embedder.encode(SENTENCES))
    for instruction, want in (("query", embedder.encode_queries(SENTENCES)), ("passage", embedder.encode_corpus(SENTENCES)),
                              ("none", embedder.encode(SENTENCES))):
        got = post(server, "/embed", {"inputs": SENTENCES, "instruction": instruction}).json()
        assert close(got["embeddings"], want) and got["truncated"] == [False] * len(SENTENCES)
    long_text = " ".join(["the cat sat on the mat"] * 40)  # far past the tiny model's 64 tokens
    with pytest.warns(bgeort.TruncationWarning):
        want = embedder.encode(["hello", long_text])
    truncated = post(server, "/embed", {"inputs": ["hello", long_text]}).json()
    assert close(truncated["embeddings"], want) and truncated["truncated"] == [False, True]
    refused = post(server, "/embed", {"inputs": ["hello", long_text], "truncate": False})
    assert refused.status_code == 413
    error = refused.json()["error"]
    assert error["param"] == "inputs[1]" and "inputs[1]" in error["message"] and error["code"] == "input_too_long"


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_equals_the_library(server, reranker, path):
    want = reranker.rerank(QUERY, DOCUMENTS)
    got = post(server, path, {"model": "x", "query": QUERY, "documents": DOCUMENTS}).json()
    assert [r["index"] for r in got["results"]] == want.indices.tolist()
    assert close([r["relevance_score"] for r in got["results"]], want.scores)
    assert all(0 <= r["relevance_score"] <= 1 and "document" not in r for r in got["results"])
    pairs = [(QUERY, document) for document in DOCUMENTS]
    assert got["usage"]["total_tokens"] == int(reranker.score_window(pairs, normalize=False)[2].sum())
    raw = reranker.rerank(QUERY, DOCUMENTS, normalize=False, top_k=2)
    got = post(server, path, {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2,
                              "return_documents": True, "raw_scores": True}).json()
    assert [r["index"] for r in got["results"]] == raw.indices.tolist()
    assert close([r["relevance_score"] for r in got["results"]], raw.scores)
    assert [r["document"]["text"] for r in got["results"]] == [DOCUMENTS[i] for i in raw.indices]
    tei = post(server, path, {"query": QUERY, "texts": DOCUMENTS}).json()
    assert [r["index"] for r in tei["results"]] == want.indices.tolist()


def test_models_info_and_metrics(server, embedder, reranker):
    models = httpx.get(server + "/v1/models", headers=AUTH, timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [embedder.path.name, reranker.path.name]
    assert [m.id for m in client(server).models.list().data] == [embedder.path.name, reranker.path.name]
    info = httpx.get(server + "/info", headers=AUTH, timeout=10).json()
    assert info["version"] == bgeort.__version__
    assert info["embedder"]["dim"] == embedder.dim and info["embedder"]["threads"] == 1
    assert info["embedder"]["spinning"] == info["reranker"]["spinning"] == "runs"  # the server's default
    assert info["reranker"]["max_length"] == reranker.max_length
    assert info["limits"] == {"max_inputs": MAX_INPUTS, "max_body_bytes": MAX_BODY}
    text = httpx.get(server + "/metrics", headers=AUTH, timeout=10).text
    for name in ("bgeort_requests_total", "bgeort_request_errors_total", "bgeort_tokens_total", "bgeort_queue_texts",
                 "bgeort_batch_texts_bucket", "bgeort_batch_tokens_bucket", "bgeort_queue_seconds_bucket",
                 "bgeort_inference_seconds_bucket"):
        assert name in text, name


def test_api_key(server):
    for method, path in (("POST", "/v1/embeddings"), ("POST", "/v1/rerank"), ("GET", "/metrics"), ("GET", "/info"),
                         ("GET", "/v1/models"), ("POST", "/embed")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = httpx.request(method, server + path, json={"input": "hi"}, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(model="m", input="hi")


ERRORS = [  # (method, path, body: JSON value or raw bytes, status, code, param)
    ("POST", "/v1/embeddings", b"{not json", 400, "invalid_json", None),
    ("POST", "/v1/embeddings", b"", 400, "invalid_json", None),
    ("POST", "/v1/embeddings", ["a"], 400, "invalid_type", None),
    ("POST", "/v1/embeddings", {"model": "m"}, 400, "missing_field", "input"),
    ("POST", "/v1/embeddings", {"input": 5}, 400, "invalid_type", "input"),
    ("POST", "/v1/embeddings", {"input": []}, 400, "empty_input", "input"),
    ("POST", "/v1/embeddings", {"input": ["a", ""]}, 400, "empty_string", "input[1]"),
    ("POST", "/v1/embeddings", {"input": ""}, 400, "empty_string", "input[0]"),
    ("POST", "/v1/embeddings", {"input": ["a", 3]}, 400, "token_ids_not_supported", "input[1]"),
    ("POST", "/v1/embeddings", {"input": [[1, 2, 3]]}, 400, "token_ids_not_supported", "input[0]"),
    ("POST", "/v1/embeddings", {"input": [2**70]}, 400, "token_ids_not_supported", "input[0]"),  # an int, not a float
    ("POST", "/v1/embeddings", {"input": ["a", {"text": "b"}]}, 400, "invalid_type", "input[1]"),
    ("POST", "/v1/embeddings", {"input": ["a", None]}, 400, "invalid_type", "input[1]"),
    ("POST", "/v1/embeddings", {"input": ["a"] * (MAX_INPUTS + 1)}, 400, "too_many_inputs", "input"),
    ("POST", "/v1/embeddings", {"input": ["a" * (MAX_BODY + 1)]}, 413, "request_too_large", None),
    ("POST", "/v1/embeddings", {"input": "a", "encoding_format": "bits"}, 400, "invalid_value", "encoding_format"),
    ("POST", "/v1/embeddings", {"input": "a", "dimensions": "384"}, 400, "invalid_type", "dimensions"),
    ("POST", "/v1/embeddings", {"input": "a", "input_type": "code"}, 400, "invalid_value", "input_type"),
    ("POST", "/v1/embeddings", {"input": "a", "model": 3}, 400, "invalid_type", "model"),
    ("POST", "/embed", {"inputs": ["a"], "instruction": "q"}, 400, "invalid_value", "instruction"),
    ("POST", "/embed", {"inputs": ["a"], "truncate": "no"}, 400, "invalid_type", "truncate"),
    ("POST", "/embed", {"input": ["a"]}, 400, "missing_field", "inputs"),
    ("POST", "/v1/rerank", {"documents": ["a"]}, 400, "invalid_value", "query"),
    ("POST", "/v1/rerank", {"query": 3, "documents": ["a"]}, 400, "invalid_type", "query"),
    ("POST", "/v1/rerank", {"query": "", "documents": ["a"]}, 400, "invalid_value", "query"),
    ("POST", "/v1/rerank", {"query": "q", "documents": []}, 400, "empty_input", "documents"),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a", {"txt": "b"}]}, 400, "invalid_type", "documents[1].text"),
    ("POST", "/v1/rerank", {"query": "q", "texts": ["a", 2]}, 400, "token_ids_not_supported", "texts[1]"),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "invalid_value", "top_n"),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a"], "raw_scores": "yes"}, 400, "invalid_type", "raw_scores"),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["a"], "return_documents": 1}, 400, "invalid_type",
     "return_documents"),
    ("GET", "/nope", None, 404, "not_found", None),
    ("POST", "/v1/chat/completions", {"model": "m"}, 404, "not_found", None),
    ("GET", "/v1/embeddings", None, 405, "method_not_allowed", None),
    ("DELETE", "/health", None, 405, "method_not_allowed", None),
]


def test_bodies_parse_as_the_standard_library_parses_them(server, embedder):
    """orjson reads the bodies, json.loads what orjson refuses: UTF-16, NaN, integers past 64 bits."""
    want = embedder.encode(["hello world"])
    body = '{"input": ["hello world"], "encoding_format": "float", "user": %s}'
    for content in ((body % 1).encode("utf-16"), (body % "NaN").encode(), (body % 2**70).encode()):
        response = httpx.post(server + "/v1/embeddings", content=content, timeout=30,
                              headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 200 and close(response.json()["data"][0]["embedding"], want), content
    lone = httpx.post(server + "/v1/embeddings", content=b'{"input": ["a \\ud800 b"]}', timeout=30,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert lone.status_code == 400 and "Unicode" in lone.json()["error"]["message"]


@pytest.mark.parametrize("method,path,body,status,code,param", ERRORS,
                         ids=[f"{m} {p} {s} {c} {q}" for m, p, _, s, c, q in ERRORS])
def test_errors_are_openai_shaped(server, method, path, body, status, code, param):
    content = body if isinstance(body, bytes) or body is None else None
    response = httpx.request(method, server + path, headers={**AUTH, "Content-Type": "application/json"},
                             content=content, json=None if content is not None or body is None else body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert "Traceback" not in response.text
    if param is not None and "[" in param:
        assert param in error["message"]  # the message names the field and the index


def metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers=AUTH, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_concurrent_requests_share_batches(server, embedder):
    batches = metric(server, "bgeort_batches_total", model="embedder")
    requests = 48
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(requests)]
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:  # 48 requests, each bounded by its timeout
        responses = list(pool.map(lambda text: post(server, "/v1/embeddings", {"input": text, "encoding_format": "float"}),
                                  texts))
    assert [r.status_code for r in responses] == [200] * requests
    want = embedder.encode(texts)
    assert close([r.json()["data"][0]["embedding"] for r in responses], want)
    ran = metric(server, "bgeort_batches_total", model="embedder") - batches
    assert 1 <= ran < requests, ran


@pytest.fixture
def gated(tiny_model):
    """A server in a thread whose inference thread waits on a gate: requests stay queued."""
    import uvicorn

    from bgeort.server import create_app, open_service

    runner = bgeort.InferenceThread()
    gate = threading.Event()
    runner.executor.submit(gate.wait, 60)
    service = open_service(embedder=str(tiny_model), reranker=None, runner=runner, max_queue=3, threads=1)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run)
    thread.start()
    for _ in range(2000):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        yield url, service, gate
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()


def until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_queue_is_429_and_a_gone_client_drops_its_work(gated, embedder):
    url, service, gate = gated
    stats = service.embedder.stats
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, url, "/v1/embeddings", {"input": ["hello world"], "encoding_format": "float"})
        until(lambda: stats.requests == 0 and stats.queued_texts == 0 and service.embedder._queue._worker is not None
              and not service.embedder._queue._pending)  # taken into a batch that waits on the gate
        second = pool.submit(post, url, "/v1/embeddings", {"input": SENTENCES[:2], "encoding_format": "float"})
        until(lambda: stats.queued_texts == 2)
        refused = post(url, "/v1/embeddings", {"input": SENTENCES[:2]})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full" and "max_queue" in refused.json()["error"]["message"]
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0).embeddings.create(model="m",
                                                                                               input=SENTENCES[:2])
        with pytest.raises(httpx.ReadTimeout):  # this client gives up while its text is queued
            httpx.post(url + "/v1/embeddings", json={"input": ["a cat"]}, timeout=httpx.Timeout(30, read=0.5))
        until(lambda: stats.cancelled == 1 and stats.queued_texts == 2)
        gate.set()
        results = [first.result(timeout=60), second.result(timeout=60)]
    assert [r.status_code for r in results] == [200, 200]
    assert close(results[1].json()["data"][0]["embedding"], embedder.encode(SENTENCES[0]))
    assert stats.texts == 3  # the gone client's text never ran
    until(lambda: metric(url, "bgeort_requests_total", route="/v1/embeddings", status="499") == 1)
    assert metric(url, "bgeort_requests_total", route="/v1/embeddings", status="429") == 2


def test_a_reranker_folder_alone_and_no_key(bert_reranker, reranker):
    process = subprocess.Popen([sys.executable, "-m", "bgeort", "serve", str(bert_reranker), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={k: v for k, v in os.environ.items() if k != "BGEORT_API_KEY"})
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        url = wait_for_url(lines, process)
        got = httpx.post(url + "/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60).json()
        assert [r["index"] for r in got["results"]] == reranker.rerank(QUERY, DOCUMENTS).indices.tolist()
        missing = httpx.post(url + "/v1/embeddings", json={"input": "hi"}, timeout=60)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_loaded"
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
    assert "reranker: " in "".join(lines.queue) and "embedder: " not in "".join(lines.queue)


def test_a_bge_m3_folder_serves_dense_and_sparse(m3_model, server):
    """bge-m3: dense vectors on every route, its lexical weights through /embed's return_sparse;
    a dense-only model answers return_sparse with a 400 naming the field."""
    m3 = bgeort.M3Embedder(m3_model, threads=1)
    texts = ["the giant panda is a bear", "hello hello world", "hi"]
    want = m3.encode(texts, return_sparse=True)
    process = subprocess.Popen([sys.executable, "-m", "bgeort", "serve", str(m3_model), "--port", "0", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={k: v for k, v in os.environ.items() if k != "BGEORT_API_KEY"})
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    try:
        url = wait_for_url(lines, process)
        got = httpx.post(url + "/embed", json={"inputs": texts, "return_sparse": True}, timeout=60).json()
        assert "embeddings" in got, got
        assert close(got["embeddings"], want["dense_vecs"])
        assert [item["indices"] for item in got["sparse"]] == [ids.tolist() for ids in want["sparse_indices"]]
        for item, values in zip(got["sparse"], want["sparse_values"]):
            assert close(item["values"], values)
        dense = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60).embeddings.create(
            model="bge-m3", input=texts)
        assert close([d.embedding for d in dense.data], want["dense_vecs"])
        assert "sparse" not in httpx.post(url + "/embed", json={"inputs": texts}, timeout=60).json()
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)
        m3.close()
    refused = post(server, "/embed", {"inputs": ["hi"], "return_sparse": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "return_sparse"


def test_without_the_serve_extra_the_error_names_the_pip_line(tiny_model):
    script = ("import sys; sys.modules['starlette'] = None\n"  # as if starlette were not installed
              f"from bgeort.cli import main; sys.exit(main(['serve', {str(tiny_model)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install 'bgeort[serve]'" in done.stderr and "Traceback" not in done.stderr
