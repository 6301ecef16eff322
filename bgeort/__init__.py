"""bgeort: BGE embedding models on ONNX Runtime, with numpy and Rust tokenizers only.

    import bgeort
    model = bgeort.Embedder("models/bge-small-en-v1.5")
    vectors = model.encode(["hello", "world"])      # float32 (2, 384), L2-normalized
"""

from .aio import AsyncEmbedder, AsyncReranker, BatchStats, InferenceThread
from .embedder import Embedder
from .errors import (BgeortError, DeviceError, MissingDependencyError, ModelFolderError, QueueFullError,
                     TruncationWarning)
from .m3 import M3Embedder
from .manifest import FORMAT_VERSION, Manifest, load_manifest
from .reranker import Ranking, Reranker

__version__ = "0.2.0"

__all__ = [
    "Embedder",
    "M3Embedder",
    "Reranker",
    "Ranking",
    "AsyncEmbedder",
    "AsyncReranker",
    "InferenceThread",
    "BatchStats",
    "Manifest",
    "load_manifest",
    "FORMAT_VERSION",
    "BgeortError",
    "ModelFolderError",
    "DeviceError",
    "MissingDependencyError",
    "QueueFullError",
    "TruncationWarning",
]
