"""Opening the models, warming them up and running uvicorn: what `bgeort serve` calls."""

from __future__ import annotations

import sys
import warnings

from ..aio import DEFAULT_MAX_BATCH_TEXTS, DEFAULT_MAX_QUEUE, AsyncEmbedder, AsyncReranker, InferenceThread
from ..errors import TruncationWarning
from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INPUTS, Service, create_app

WARM_UP = ["warm up", "a few short sentences so that every session and arena is allocated before /health"] * 32


def open_service(*, embedder: str | None, reranker: str | None, api_key: str | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_batch_texts: int = DEFAULT_MAX_BATCH_TEXTS,
                 max_inputs: int = DEFAULT_MAX_INPUTS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 runner: InferenceThread | None = None, **options) -> Service:
    """Open and warm up the model folders; both share one inference thread (they take turns on all
    the cores: docs/server.md, "How the cores are shared")."""
    runner = InferenceThread() if runner is None else runner
    queue = dict(max_queue=max_queue, max_batch_texts=max_batch_texts, runner=runner)
    async_embedder = async_reranker = None
    if embedder is not None:  # the async models open the folders, so they close them
        async_embedder = AsyncEmbedder(embedder, **queue, **options)
        async_embedder.model.encode(WARM_UP)
    if reranker is not None:
        async_reranker = AsyncReranker(reranker, **queue, **options)
        async_reranker.model.compute_score([(text, text) for text in WARM_UP])
    return Service(embedder=async_embedder, reranker=async_reranker, runner=runner, api_key=api_key,
                   max_inputs=max_inputs, max_body_bytes=max_body_bytes)


def describe(service: Service, url: str) -> str:
    lines = [f"bgeort serve: ready at {url}"]
    for role, model in (("embedder", service.embedder), ("reranker", service.reranker)):
        if model is not None:
            library = model.model
            lines.append(f"  {role}: {library.path} (precision {library.precision}, device {library.device}, "
                         f"threads {library._model.threads}, max_length {library.max_length})")
    lines.append(f"  API key: {'required (Authorization: Bearer KEY)' if service.api_key else 'none'}; "
                 f"max queue {(service.embedder or service.reranker).max_queue} texts, "
                 f"max {service.max_inputs} inputs and {service.max_body_bytes} bytes per request")
    return "\n".join(lines)


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> int:
    """Run until SIGINT/SIGTERM; prints the URL (with the real port, for --port 0) once listening."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                shown = f"[{host}]" if ":" in host else host
                print(describe(service, f"http://{shown}:{bound}"), flush=True)

    # One warning per request would flood the log; a truncated input shows in /embed's "truncated".
    warnings.simplefilter("ignore", TruncationWarning)
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="on")
    Server(config).run()
    sys.stdout.flush()
    return 0
