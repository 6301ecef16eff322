"""`bgeort serve MODEL_DIR [--reranker DIR]`: the OpenAI / Cohere-compatible HTTP server (bgeort/server)."""

from __future__ import annotations

import argparse
import os

HELP = "serve an embedder and/or a reranker over HTTP (OpenAI /v1/embeddings, Cohere/Jina /v1/rerank)"
SPINNING = {"on": True, "runs": "runs", "off": False}  # --spinning's values, as the library's `spinning`


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL_DIR",
                        help="a model folder; an embedder, or a reranker when --reranker is not given")
    parser.add_argument("--reranker", metavar="DIR", help="a reranker folder to serve beside the embedder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", default=os.environ.get("BGEORT_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health (default: $BGEORT_API_KEY)")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: the cores this process may use)")
    # 'runs' by default: ahead of 'on' at every one-sentence load in two runs (bench/results/serve.md).
    parser.add_argument("--spinning", choices=SPINNING, default="runs",
                        help="onnxruntime's threads: 'runs' (default) spin during a run and stop when it returns, "
                             "leaving the time between runs to the event loop and the clients on the same cores; "
                             "'on' spin during and between runs (the library's default); 'off' never spin")
    parser.add_argument("--no-spinning", dest="spinning", action="store_const", const="off",
                        help="the same as --spinning off")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-queue", type=int, default=None, help="texts waiting per model before 429 (default 8192)")
    parser.add_argument("--max-batch-texts", type=int, default=None,
                        help="texts gathered into one library call at most (default 1024)")
    parser.add_argument("--max-inputs", type=int, default=None, help="inputs per request at most (default 2048)")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="request body size at most (default 8 MiB)")
    parser.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")


def run(args) -> int:
    from ..manifest import load_manifest
    from ..server import open_service, serve

    embedder, reranker = args.model, args.reranker
    if embedder is None and reranker is None:
        raise SystemExit("bgeort serve: give a model folder (MODEL_DIR), a --reranker DIR, or both")
    if embedder is not None and reranker is None and load_manifest(embedder).kind == "reranker":
        embedder, reranker = None, embedder  # a reranker folder alone
    limits = {name: value for name, value in (("max_queue", args.max_queue), ("max_batch_texts", args.max_batch_texts),
                                              ("max_inputs", args.max_inputs), ("max_body_bytes", args.max_body_bytes))
              if value is not None}
    service = open_service(embedder=embedder, reranker=reranker, api_key=args.api_key, threads=args.threads,
                           precision=args.precision, device=args.device, spinning=SPINNING[args.spinning],
                           **limits)
    return serve(service, host=args.host, port=args.port, log_level=args.log_level)
