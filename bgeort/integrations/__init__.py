"""Adapters for LangChain, LlamaIndex, Haystack, mteb and Ray Data: one module per framework.

Each module imports its framework when it is imported itself, never before; `import bgeort` and
`import bgeort.integrations` import none of them. docs/integrations.md has an example for each.
"""

from __future__ import annotations

import importlib

EXTRAS = {  # the top-level module each adapter needs -> the extra that installs it
    "langchain_core": "langchain",
    "llama_index.core": "llama-index",
    "haystack": "haystack",
    "mteb": "mteb",
    "ray": "ray",
    "pyarrow": "ray",
}


def require(module: str):
    """Import `module` (a framework an adapter needs), or raise MissingDependencyError with the pip line."""
    from ..errors import MissingDependencyError

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS[module]
        raise MissingDependencyError(
            f"this bgeort integration needs {module.split('.')[0]}, which is not installed ({exc}). "
            f"Install it with: pip install 'bgeort[{extra}]'"
        ) from exc
