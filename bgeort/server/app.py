"""The HTTP layer: Starlette routes over bgeort.aio's async models, requests checked by schemas.py,
every error in OpenAI's shape. It translates; the queue (bgeort/aio.py) batches; the library computes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import re
import time
import uuid

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..errors import BgeortError, QueueFullError
from .metrics import Metrics
from .schemas import ApiError, embed_request, embeddings_request, rerank_request

LOG = logging.getLogger("bgeort.server")
DEFAULT_MAX_INPUTS = 2048  # OpenAI's own limit per embeddings request
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
CLIENT_GONE = 499  # nginx's status for "the client closed the request", counted in /metrics only
_LONG_NUMBER = re.compile(rb"\d{19}")  # 19 digits or more: maybe past 64 bits (read_json)


class JSONResponse(StarletteJSONResponse):
    """JSON by orjson: numpy arrays go out as they are, float32 in its shortest exact form (half the
    bytes of float64 reprs, a twentieth of json.dumps's time: bench/README.md, "The server")."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value):
    """What orjson hands back: numpy arrays it does not take as they are (not C-contiguous) and scalars."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its queued work was dropped."""


class Service:
    """What the routes read: the async models, the limits, the API key, the metrics."""

    def __init__(self, *, embedder=None, reranker=None, runner=None, api_key: str | None = None,
                 max_inputs: int = DEFAULT_MAX_INPUTS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        if embedder is None and reranker is None:
            raise ValueError("give an embedder, a reranker, or both")
        self.embedder, self.reranker, self.runner = embedder, reranker, runner
        self.api_key = api_key or None
        self.max_inputs, self.max_body_bytes = max_inputs, max_body_bytes
        self.metrics = Metrics()
        self.ready = False
        self._names = {id(model): model.model.path.name for model in (embedder, reranker) if model is not None}
        for role, model in (("embedder", embedder), ("reranker", reranker)):
            if model is not None:
                self.metrics.watch(role, model)

    def name(self, model) -> str:
        return self._names[id(model)]

    async def close(self) -> None:
        self.ready = False
        for model in (self.embedder, self.reranker):
            if model is not None:
                await model.close()
        if self.runner is not None:
            self.runner.close()


def create_app(service: Service) -> Starlette:
    """The ASGI app. Its lifespan marks the service ready at start and closes the models at the end."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.ready = True
        try:
            yield
        finally:
            await service.close()

    def route(path: str, handler, methods: list[str], *, public: bool = False) -> Route:
        return Route(path, endpoint(service, path, handler, public=public), methods=methods)

    routes = [route("/health", health, ["GET"], public=True), route("/v1/models", models, ["GET"]),
              route("/info", info, ["GET"]), route("/metrics", metrics, ["GET"]), route("/embed", embed, ["POST"])]
    routes += [route(path, embeddings, ["POST"]) for path in ("/v1/embeddings", "/embeddings")]
    routes += [route(path, rerank, ["POST"]) for path in ("/v1/rerank", "/rerank", "/v2/rerank")]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = (f"no route {request.method} {request.url.path}; see GET /info for the routes"
                   if exc.status_code == 404 else f"{request.method} is not allowed on {request.url.path}"
                   if exc.status_code == 405 else str(exc.detail))
        response = error_response(ApiError(exc.status_code, message, code=code))
        if exc.headers:
            response.headers.update(exc.headers)
        service.metrics.answered("unmatched" if exc.status_code == 404 else request.url.path, exc.status_code, 0.0)
        return response

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def endpoint(service: Service, path: str, handler, *, public: bool):
    """Wrap a handler: API key, error mapping (nothing from user input becomes a 500), metrics."""

    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if not public:
                authorize(service, request)
            response = await handler(service, request)
        except ApiError as exc:
            response = error_response(exc)
        except QueueFullError as exc:
            response = error_response(ApiError(429, str(exc), type="rate_limit_error", code="queue_full",
                                               headers={"Retry-After": str(int(exc.retry_after))}))
        except ClientGone:
            response = Response(status_code=CLIENT_GONE)
        except (TypeError, ValueError) as exc:  # the library's own input checks
            response = error_response(ApiError(400, str(exc), code="invalid_value"))
        except BgeortError as exc:  # closed while shutting down
            response = error_response(ApiError(503, str(exc), type="server_error", code="unavailable"))
        except Exception:
            LOG.exception("internal error on %s", path)
            response = error_response(ApiError(500, "internal server error; the server log has the details",
                                               type="server_error", code="internal_error"))
        service.metrics.answered(path, response.status_code, time.perf_counter() - started)
        return response

    return wrapped


def authorize(service: Service, request: Request) -> None:
    if service.api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), service.api_key.encode()):
        raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY' "
                       "(the key given to bgeort serve with --api-key or BGEORT_API_KEY)",
                       type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_json(service: Service, request: Request):
    """The body parsed as JSON, refused past max_body_bytes without reading the rest."""
    limit = service.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if _LONG_NUMBER.search(body) is None:  # orjson reads integers past 64 bits as floats; json keeps them
        try:
            return orjson.loads(body)  # a fifth of json.loads's time on a one-sentence body
        except orjson.JSONDecodeError:
            pass  # the standard library decides the rest, so what parses and every error message stay its own
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limit} bytes (--max-body-bytes); "
                    "send fewer or shorter texts per request", code="request_too_large")


async def unless_gone(request: Request, work):
    """Await `work` (a coroutine) in this handler's task, cancelled if the client disconnects first:
    the async model then drops its queued texts. Awaited in place rather than as a task of its own,
    so its answer reaches the handler without extra event-loop turns (bench/README.md, "The server")."""
    handler = asyncio.current_task()
    gone = False

    async def disconnected() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        handler.cancel()

    watcher = asyncio.get_running_loop().create_task(disconnected())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:  # the server is stopping: the cancellation is not ours to swallow
            raise
        if hasattr(handler, "uncancel"):  # Python 3.11+: this task goes on, answering 499
            handler.uncancel()
        raise ClientGone from None
    finally:
        watcher.cancel()


def need(model, role: str, option: str):
    if model is None:
        raise ApiError(404, f"this server runs no {role}; start it with {option}", code="model_not_loaded")
    return model


async def health(service: Service, request: Request) -> Response:
    if not service.ready:
        return JSONResponse({"status": "starting or stopping"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def models(service: Service, request: Request) -> Response:
    data = [{"id": service.name(model), "object": "model", "created": int(model.model.path.stat().st_mtime),
             "owned_by": "bgeort"} for model in (service.embedder, service.reranker) if model is not None]
    return JSONResponse({"object": "list", "data": data})


# the library's `spinning` as `bgeort serve --spinning` names it
SPINNING_NAMES = {True: "on", "runs": "runs", False: "off"}


async def info(service: Service, request: Request) -> Response:
    def describe(model):
        if model is None:
            return None
        library = model.model
        manifest = library.manifest
        out = {"name": service.name(model), "path": str(library.path), "kind": manifest.kind,
               "precision": library.precision, "device": library.device, "threads": library._model.threads,
               "spinning": SPINNING_NAMES[library._model.spinning], "max_length": manifest.max_length, "max_queue": model.max_queue,
               "max_batch_texts": model._queue.max_batch_texts}
        if manifest.kind == "embedder":
            out.update(dim=manifest.dim, pooling=manifest.pooling, normalize=library.normalize_embeddings,
                       query_instruction=library.query_instruction)
        return out

    return JSONResponse({"version": __version__, "embedder": describe(service.embedder),
                         "reranker": describe(service.reranker),
                         "limits": {"max_inputs": service.max_inputs, "max_body_bytes": service.max_body_bytes},
                         "routes": ["POST /v1/embeddings", "POST /embeddings", "POST /embed", "POST /v1/rerank",
                                    "POST /rerank", "POST /v2/rerank", "GET /health", "GET /v1/models",
                                    "GET /info", "GET /metrics"]})


async def metrics(service: Service, request: Request) -> Response:
    return Response(service.metrics.exposition(), media_type=service.metrics.content_type)


async def embeddings(service: Service, request: Request) -> Response:
    model = need(service.embedder, "embedder", "an embedder folder as MODEL_DIR")
    body = embeddings_request(await read_json(service, request), dim=model.model.dim,
                                      max_inputs=service.max_inputs)
    result = await unless_gone(request, model.embed(body.texts, instruction=body.instruction))
    if body.base64:  # what the openai client asks for by default and decodes as little-endian float32
        rows = [base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
                for row in result.vectors]
    else:
        rows = result.vectors
    return JSONResponse({"object": "list", "model": service.name(model),
                         "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
                         "usage": usage(result.token_counts)})


def usage(token_counts) -> dict:
    tokens = sum(token_counts.tolist())  # plain ints: numpy's sum costs more than this on a few texts
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def embed(service: Service, request: Request) -> Response:
    model = need(service.embedder, "embedder", "an embedder folder as MODEL_DIR")
    body = embed_request(await read_json(service, request), max_inputs=service.max_inputs)
    if not body.truncate:
        counts = await unless_gone(request, model.token_counts(body.texts, instruction=body.instruction))
        limit = model.model.max_length
        over = np.flatnonzero(counts > limit)
        if len(over):
            shown = ", ".join(f"inputs[{i}] ({counts[i]} tokens)" for i in over[:10])
            raise ApiError(413, f"{len(over)} input(s) are longer than the model's {limit} tokens: {shown}; "
                           "shorten or split them, or send truncate: true", param=f"inputs[{over[0]}]",
                           code="input_too_long")
    if body.sparse and not model.has_sparse:
        raise ApiError(400, "'return_sparse' needs a bge-m3 model (lexical weights); this model gives dense "
                       "vectors only: leave 'return_sparse' out", param="return_sparse", code="invalid_value")
    result = await unless_gone(request, model.embed(body.texts, instruction=body.instruction, sparse=body.sparse))
    answer = {"model": service.name(model), "embeddings": result.vectors,
              "truncated": result.truncated, "usage": usage(result.token_counts)}
    if body.sparse:
        answer["sparse"] = [{"indices": ids, "values": values} for ids, values in result.sparse]
    return JSONResponse(answer)


async def rerank(service: Service, request: Request) -> Response:
    model = need(service.reranker, "reranker", "--reranker DIR")
    body = rerank_request(await read_json(service, request), max_inputs=service.max_inputs)
    ranking, scored = await unless_gone(request, model.rerank_counted(body.query, body.documents, top_k=body.top_n,
                                                                      normalize=not body.raw_scores))
    results = []
    for index, score in zip(ranking.indices.tolist(), ranking.scores.tolist()):
        result = {"index": index, "relevance_score": score}
        if body.return_documents:
            result["document"] = {"text": body.documents[index]}
        results.append(result)
    return JSONResponse({"id": str(uuid.uuid4()), "model": service.name(model), "results": results,
                         "usage": usage(scored.token_counts),
                         "meta": {"billed_units": {"search_units": 1}}})
