"""`bgeort serve`: an OpenAI- and Cohere/Jina-compatible HTTP server over bgeort.aio (the `serve` extra).

Three layers: app.py (routes, error mapping) and schemas.py (request bodies) over bgeort/aio.py
(the batching queue) over the library. Nothing here is imported by `import bgeort`.
"""

from __future__ import annotations

import importlib

from ..errors import MissingDependencyError

for _module in ("starlette", "uvicorn", "prometheus_client", "orjson"):
    try:
        importlib.import_module(_module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"bgeort serve needs {_module} ({exc}). Install the server extra: pip install 'bgeort[serve]'"
        ) from exc

from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_INPUTS, Service, create_app  # noqa: E402
from .main import open_service, serve  # noqa: E402

__all__ = ["Service", "create_app", "open_service", "serve", "DEFAULT_MAX_INPUTS", "DEFAULT_MAX_BODY_BYTES"]
