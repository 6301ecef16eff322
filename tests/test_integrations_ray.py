"""Ray Data adapter on a real local cluster: STS-B sentences from a Parquet file through map_batches
to Parquet, every id's vector checked against a single-process Embedder."""

import csv
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pandas")

import bgeort  # noqa: E402
from bgeort.integrations.ray import Embed, Rerank, default_actors, embed_dataset  # noqa: E402

pytestmark = [pytest.mark.export, pytest.mark.slow]
STSB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stsb" / "stsb-en-test.csv"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sentences():
    if not STSB.is_file():
        pytest.skip(f"{STSB} is not on this machine")
    with open(STSB, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, quoting=csv.QUOTE_NONE))
    return [text for row in rows for text in row[:2]]  # 2,758 sentences


def test_a_parquet_file_through_map_batches(cluster, sentences, tiny_model, tmp_path):
    source = tmp_path / "texts.parquet"
    ids = np.arange(len(sentences), dtype=np.int64) * 7 + 3  # not the row numbers
    pq.write_table(pa.table({"id": ids, "text": sentences, "source": ["stsb"] * len(sentences)}), source)
    ds = ray.data.read_parquet(str(source)).map_batches(
        Embed, fn_constructor_kwargs={"model_path": str(tiny_model)}, compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1, batch_size=500)  # Ray's default batch format
    ds.write_parquet(str(tmp_path / "out"))

    table = pq.read_table(tmp_path / "out")
    embedder = bgeort.Embedder(tiny_model, threads=1)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), embedder.dim)
    assert table.column("source").to_pylist() == ["stsb"] * len(sentences)
    assert sorted(table.column("id").to_pylist()) == ids.tolist()
    by_id = dict(zip(ids.tolist(), embedder.encode_corpus(sentences)))
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    want = np.stack([by_id[i] for i in table.column("id").to_pylist()])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    texts = dict(zip(ids.tolist(), sentences))
    assert all(texts[i] == t for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist()))


@pytest.mark.parametrize("batch_format", ["numpy", "pandas", "pyarrow"])
def test_every_batch_format_and_the_query_instruction(cluster, sentences, tiny_model, batch_format):
    instruction = "Represent this sentence for searching relevant passages: "
    ds = ray.data.from_items([{"id": i, "question": t} for i, t in enumerate(sentences[:60])])
    out = ds.map_batches(Embed, fn_constructor_kwargs={
        "model_path": str(tiny_model), "text_column": "question", "output_column": "vector", "instruction": "query",
        "query_instruction_for_retrieval": instruction}, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
        batch_size=25, batch_format=batch_format).take_all()
    embedder = bgeort.Embedder(tiny_model, threads=1)
    out.sort(key=lambda row: row["id"])
    got = np.array([row["vector"] for row in out], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.encode([instruction + t for t in sentences[:60]]), atol=1e-6, rtol=0)
    assert [row["question"] for row in out] == sentences[:60]


def test_embed_dataset_picks_the_settings(cluster, sentences, tiny_model):
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(sentences[:300])])
    with pytest.warns(RuntimeWarning, match="hold all 2 CPUs.*Leave a CPU free: actors=1"):
        ds = embed_dataset(ds, tiny_model, actors=2, batch_size=64)  # from_items has no read tasks to starve
    rows = sorted(ds.take_all(), key=lambda row: row["id"])
    np.testing.assert_allclose(np.array([row["embedding"] for row in rows]),
                               bgeort.Embedder(tiny_model, threads=1).encode_corpus(sentences[:300]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("cpus, per_actor, actors", [(1, 1, 1), (2, 1, 1), (3, 1, 2), (8, 2, 3), (64, 4, 15), (2, 4, 1)])
def test_default_actors_leave_a_cpu_for_reads_and_writes(cpus, per_actor, actors):
    assert default_actors(cpus, per_actor) == actors


def test_embed_dataset_defaults_finish_a_parquet_read_and_write(cluster, sentences, tiny_model, tmp_path):
    """Actors on every CPU once starved read_parquet's tasks on this 2-CPU cluster and the job never
    ended: the defaults must finish (bounded by a thread join, so a regression fails, not hangs)."""
    import threading

    texts = sentences[:200]
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), tmp_path / "in.parquet")
    done = []
    worker = threading.Thread(target=lambda: done.append(embed_dataset(
        ray.data.read_parquet(str(tmp_path / "in.parquet")), tiny_model, batch_size=64).write_parquet(
        str(tmp_path / "out"))), daemon=True)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "embed_dataset's default settings stalled a read_parquet -> write_parquet job"
    table = pq.read_table(tmp_path / "out").sort_by("id")
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist(), dtype=np.float32),
                               bgeort.Embedder(tiny_model, threads=1).encode_corpus(texts), atol=1e-6, rtol=0)


def test_rerank_pairs(cluster, sentences, bert_reranker):
    pairs = list(zip(sentences[0:80:2], sentences[1:80:2]))
    ds = ray.data.from_items([{"id": i, "query": q, "document": d} for i, (q, d) in enumerate(pairs)])
    rows = sorted(ds.map_batches(Rerank, fn_constructor_kwargs={"model_path": str(bert_reranker)},
                                 compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=16).take_all(),
                  key=lambda row: row["id"])
    want = bgeort.Reranker(bert_reranker, threads=1).compute_score(pairs, normalize=True)
    np.testing.assert_allclose([row["score"] for row in rows], want, atol=1e-6, rtol=0)


def test_outside_ray_and_bad_columns(tiny_model):
    embed = Embed(tiny_model, threads=1)
    table = embed(pa.table({"text": ["a panda", "a bear"], "n": [1, 2]}))
    assert table.column_names == ["text", "n", "embedding"]
    with pytest.raises(KeyError, match=r"no column 'text'.*text_column"):
        embed({"body": np.array(["a panda"], dtype=object)})
    with pytest.raises(TypeError, match=r"column 'text': texts\[1\] is NoneType"):
        embed(pa.table({"text": ["a panda", None]}))
    with pytest.raises(ValueError, match="instruction must be one of"):
        Embed(tiny_model, instruction="queries")


def test_threads_follow_the_cpus_ray_gives(cluster):
    from bgeort.integrations.ray import actor_threads

    @ray.remote
    def threads():
        return actor_threads()

    assert ray.get([threads.options(num_cpus=1).remote(), threads.options(num_cpus=2).remote()]) == [1, 2]
