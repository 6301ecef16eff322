"""mteb: `BgeortEncoder`, an mteb encoder (`AbsEncoder` with a `mteb_model_meta`) over `bgeort.Embedder`,
so the MTEB harness runs on an exported folder.

    import mteb
    from bgeort.integrations.mteb import BgeortEncoder
    results = mteb.evaluate(BgeortEncoder("models/bge-small-en-v1.5"), mteb.get_tasks(tasks=["SciFact"]))

Retrieval queries go through `encode_queries` (the manifest's query instruction, as MTEB's own BGE
entry does: retrieval queries only); everything else through `encode_corpus`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import require

mteb = require("mteb")

from mteb.models import ModelMeta  # noqa: E402
from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from .. import __version__  # noqa: E402
from ..embedder import Embedder  # noqa: E402


def model_meta(embedder: Embedder, *, name: str | None = None) -> ModelMeta:
    """What mteb records about the run: the folder's name, its graph's sha256 as the revision."""
    manifest = embedder.manifest
    variant = manifest.variants[embedder.precision]
    return ModelMeta(
        loader=None, name=name or f"bgeort/{Path(embedder.path).name}", revision=variant.sha256[:12],
        release_date=None, languages=None, n_parameters=None, memory_usage_mb=variant.total_bytes / 2**20,
        max_tokens=manifest.max_length, embed_dim=manifest.dim, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["ONNX"],
        reference="https://github.com/FlagOpen/FlagEmbedding", similarity_fn_name="cosine",
        use_instructions=bool(embedder.query_instruction), training_datasets=None,
        adapted_from=manifest.provenance.get("source"), citation=None,
        experiment_kwargs={"bgeort": __version__, "precision": embedder.precision},
    )


class BgeortEncoder(AbsEncoder):
    """An exported embedding folder as an mteb encoder. `name` overrides the name mteb records
    (default `bgeort/<folder name>`); `options` are `bgeort.Embedder`'s."""

    def __init__(self, model_path, *, name: str | None = None, **options):
        self.embedder = Embedder(model_path, **options)
        self.model_prompts = {}
        self.mteb_model_meta = model_meta(self.embedder, name=name)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        if prompt_type == PromptType.query and task_metadata.type == "Retrieval":
            return self.embedder.encode_queries(texts)
        return self.embedder.encode_corpus(texts)
