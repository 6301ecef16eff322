"""Published MTEB scores (x100), keyed by model name, copied from their sources; never from our output.

- all-MiniLM-L6-v2: ../shared/data/README.md section 2 (embeddings-benchmark/results, mteb 1.12.75).
  Its BIOSSES is on a slightly different copy of the data (see biosses/README.md): approximate only.
- bge-small-en-v1.5: the model-index YAML header of ../shared/seed/bge-small-en-v1.5-model-card.md
  (BAAI's own numbers, `cos_sim_spearman`, `ndcg_at_10`, `recall_at_100`, `accuracy`).
"""

PUBLISHED = {
    "all-MiniLM-L6-v2": {
        "source": "../shared/data/README.md (embeddings-benchmark/results, mteb 1.12.75)",
        "STSBenchmark": 82.03247283076371,
        "SICK-R": 77.58245525469719,
        "BIOSSES": 81.64041444909368,
        "STS12": 72.36899998079941,
        "STS13": 80.60316722220763,
        "STS14": 75.58912408385123,
        "STS15": 85.38961998125277,
        "STS16": 78.98945343973262,
        "SciFact": 64.508,
        "Banking77": 80.04220779220779,
    },
    "bge-small-en-v1.5": {
        "source": "../shared/seed/bge-small-en-v1.5-model-card.md (model-index)",
        "STSBenchmark": 85.86473738688068,
        "SICK-R": 79.40972617119405,
        "BIOSSES": 83.75492046087288,
        "STS12": 77.44128693329532,
        "STS13": 82.97994638856723,
        "STS14": 81.83560996841379,
        "STS15": 87.26412811156248,
        "STS16": 84.93344499318864,
        "SciFact": 71.275,
        "SciFact recall@100": 94.167,
        "Banking77": 85.74025974025975,
    },
}


def published_for(name: str) -> dict:
    """The model's published scores ({} when none are known), matched on the folder name."""
    return PUBLISHED.get(name, {})
