"""Request bodies checked into plain values, and the OpenAI-shaped error every 4xx/5xx carries.

Plain functions over the parsed JSON, so each message can name the field and the index at fault.
Policy (docs/server.md, "Errors"): unknown fields are ignored (clients send extras), empty lists and
empty strings are refused as OpenAI refuses them, token-id arrays are refused (send text).
"""

from __future__ import annotations

from dataclasses import dataclass


class ApiError(Exception):
    """An HTTP error with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got a JSON {_json_type(body)}", None, "invalid_type")
    return body


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _texts(value, field: str, *, max_inputs: int, allow_objects: bool = False) -> list[str]:
    """A str or a list of non-empty str (or {text} objects where allowed), naming the bad index."""
    if value is None:
        raise _bad(f"'{field}' is required", field, "missing_field")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _bad(f"'{field}' must be a string or an array of strings, got a JSON {_json_type(value)}", field,
                   "invalid_type")
    if not value:
        raise _bad(f"'{field}' must not be an empty array; send at least one text", field, "empty_input")
    if len(value) > max_inputs:
        raise _bad(f"'{field}' holds {len(value)} items; this server takes at most {max_inputs} per request "
                   "(--max-inputs): split the request", field, "too_many_inputs")
    texts = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if allow_objects and isinstance(item, dict):
            item = item.get("text")
            where += ".text"
        if isinstance(item, bool) or not isinstance(item, (str, int, list)):
            raise _bad(f"'{where}' must be a string, got a JSON {_json_type(item)}", where, "invalid_type")
        if isinstance(item, int) or isinstance(item, list):
            raise _bad(f"'{where}' is a token id or a token-id array; this server takes text only: send the "
                       "strings themselves", where, "token_ids_not_supported")
        if not item:
            raise _bad(f"'{where}' is an empty string; every input must hold some text", where, "empty_string")
        texts.append(item)
    return texts


def _choice(body: dict, field: str, choices: tuple, default):
    value = body.get(field)
    if value is None:
        return default
    if value not in choices:
        raise _bad(f"'{field}' must be one of {', '.join(map(repr, choices))}, got {value!r:.60}", field)
    return value


def _flag(body: dict, field: str, default: bool) -> bool:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{field}' must be true or false, got {value!r:.60}", field, "invalid_type")
    return value


def _model(body: dict) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad(f"'model' must be a string, got a JSON {_json_type(model)}", "model", "invalid_type")


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    instruction: str  # "none" | "query" | "passage"
    base64: bool
    truncate: bool = True
    openai: bool = True
    sparse: bool = False  # /embed's return_sparse (bge-m3 folders): lexical weights beside the vectors


def embeddings_request(body, *, dim: int, max_inputs: int) -> EmbeddingsRequest:
    """POST /v1/embeddings (OpenAI), with bgeort's `input_type` extension."""
    body = _object(body)
    _model(body)
    texts = _texts(body.get("input"), "input", max_inputs=max_inputs)
    encoding = _choice(body, "encoding_format", ("float", "base64"), "float")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise _bad(f"'dimensions' must be an integer, got {dimensions!r:.60}", "dimensions", "invalid_type")
        if dimensions != dim:
            raise _bad(f"'dimensions' is {dimensions}, but this model gives {dim}-dimensional vectors only: BGE "
                       "is not Matryoshka-trained, so cut vectors lose quality. Leave 'dimensions' out",
                       "dimensions")
    input_type = _choice(body, "input_type", ("query", "document", "passage"), None)
    instruction = {None: "none", "query": "query", "document": "passage", "passage": "passage"}[input_type]
    return EmbeddingsRequest(texts, instruction, encoding == "base64")


def embed_request(body, *, max_inputs: int) -> EmbeddingsRequest:
    """POST /embed (bgeort's own shape): inputs, instruction, truncate, return_sparse."""
    body = _object(body)
    texts = _texts(body.get("inputs"), "inputs", max_inputs=max_inputs)
    instruction = _choice(body, "instruction", ("query", "passage", "none"), "none")
    return EmbeddingsRequest(texts, instruction, False, truncate=_flag(body, "truncate", True), openai=False,
                             sparse=_flag(body, "return_sparse", False))


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    raw_scores: bool


def rerank_request(body, *, max_inputs: int) -> RerankRequest:
    """POST /v1/rerank (Cohere / Jina; `texts` is text-embeddings-inference's name for `documents`)."""
    body = _object(body)
    _model(body)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        problem = "is required" if query is None else ("is an empty string" if query == "" else
                                                       f"must be a string, got a JSON {_json_type(query)}")
        raise _bad(f"'query' {problem}", "query", "invalid_type" if query not in (None, "") else "invalid_value")
    field = "documents" if body.get("documents") is not None or body.get("texts") is None else "texts"
    documents = _texts(body.get(field), field, max_inputs=max_inputs, allow_objects=True)
    top_n = body.get("top_n", body.get("top_k"))
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise _bad(f"'top_n' must be a positive integer, got {top_n!r:.60}", "top_n")
    return RerankRequest(query, documents, top_n, _flag(body, "return_documents", False),
                         _flag(body, "raw_scores", False))
