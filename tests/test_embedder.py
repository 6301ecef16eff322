"""bgeort.Embedder on exported generated models: API, input handling, errors."""

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import bgeort
from bgeort.errors import DeviceError, ModelFolderError, TruncationWarning
from bgeort.manifest import load_manifest
from bgeort.model import choose_precisions

pytestmark = pytest.mark.export

SENTENCES = ["the man is playing guitar", "a cat sat on the mat", "hello world", "", "what is a panda ?",
             "the red car is fast and the blue car is slow"]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return bgeort.Embedder(tiny_model, precision="fp32")


def test_shapes_dtype_and_norm(tiny):
    vectors = tiny.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    single = tiny.encode("hello world")
    assert single.shape == (32,)
    np.testing.assert_allclose(single, vectors[2], atol=1e-6)


def test_empty_list_and_empty_string(tiny):
    assert tiny.encode([]).shape == (0, 32)
    assert tiny.encode([]).dtype == np.float32
    assert np.isfinite(tiny.encode("")).all()


def test_order_is_restored_whatever_the_batching(tiny):
    one_by_one = np.stack([tiny.encode(text) for text in SENTENCES])
    for batch_size in (1, 2, 64):
        np.testing.assert_allclose(tiny.encode(SENTENCES, batch_size=batch_size), one_by_one, atol=1e-5)
    reversed_ = tiny.encode(SENTENCES[::-1])
    np.testing.assert_allclose(reversed_[::-1], one_by_one, atol=1e-5)


def test_normalize_option(tiny):
    raw = tiny.encode(SENTENCES, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), tiny.encode(SENTENCES), atol=1e-6)


def test_flagmodel_normalize_embeddings_option(tiny_model, tiny):
    raw = bgeort.Embedder(tiny_model, precision="fp32", normalize_embeddings=False)
    np.testing.assert_allclose(raw.encode(SENTENCES), tiny.encode(SENTENCES, normalize=False), atol=1e-6)
    np.testing.assert_allclose(raw.encode(SENTENCES, normalize=True), tiny.encode(SENTENCES), atol=1e-6)


def test_accepts_tuples_and_generators(tiny):
    expected = tiny.encode(SENTENCES)
    np.testing.assert_allclose(tiny.encode(tuple(SENTENCES)), expected, atol=1e-6)
    np.testing.assert_allclose(tiny.encode(text for text in SENTENCES), expected, atol=1e-6)


@pytest.mark.parametrize(
    "texts, message",
    [
        (["ok", 3], r"texts\[1\] is int"),
        (["ok", "fine", None], r"texts\[2\] is NoneType"),
        ([b"bytes"], r"texts\[0\] is bytes"),
        (None, "texts must be a str or a list of str, got NoneType"),
        (b"bytes", "got bytes"),
        (42, "got int"),
    ],
)
def test_bad_inputs_name_the_problem(tiny, texts, message):
    with pytest.raises(TypeError, match=message):
        tiny.encode(texts)
    # and the model keeps working afterwards
    assert tiny.encode(["still fine"]).shape == (1, 32)


def test_truncation_warns_and_token_counts_tell_full_lengths(tiny):
    long_text = " ".join(["guitar"] * 100)  # 102 tokens, model max 64
    with pytest.warns(TruncationWarning, match=r"1 of 2 inputs .* max_length=64 .*indices 1\)"):
        vectors = tiny.encode(["hello", long_text])
    assert vectors.shape == (2, 32)
    assert tiny.token_counts(["hello", long_text]).tolist() == [3, 102]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.encode(["hello", " ".join(["guitar"] * 62)])  # exactly 64 tokens: no warning


def test_max_length_option(tiny):
    text = "the man is playing guitar on the street"
    with pytest.warns(TruncationWarning):
        short = tiny.encode(text, max_length=4)
    assert not np.allclose(short, tiny.encode(text))
    with pytest.raises(ValueError, match="more than this model's 64 tokens"):
        tiny.encode(text, max_length=65)


def test_precision_choice(tiny_model):
    assert bgeort.Embedder(tiny_model).precision == "int8"  # auto on CPU
    assert bgeort.Embedder(tiny_model, precision="fp32-unfused").precision == "fp32-unfused"
    # 'fp32' runs the plain graph first on CPU (faster there), the fused one when it is missing
    fp32 = bgeort.Embedder(tiny_model, precision="fp32")
    assert (fp32.precision, fp32.device) == ("fp32-unfused", "cpu")
    manifest = load_manifest(tiny_model)
    without_plain = dataclasses.replace(manifest, variants={k: v for k, v in manifest.variants.items()
                                                            if k != "fp32-unfused"})
    assert choose_precisions(without_plain, "fp32", "cpu") == ["fp32"]
    assert choose_precisions(manifest, "fp32", "cuda:0") == ["fp32", "fp32-unfused"]
    assert choose_precisions(manifest, "auto", "cpu") == ["int8", "fp32-unfused", "fp32"]
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        bgeort.Embedder(tiny_model, precision="bf16")


def test_explicit_cuda_without_the_provider_is_an_error(tiny_model):
    with pytest.raises(DeviceError, match="no CUDA provider"):
        bgeort.Embedder(tiny_model, device="cuda")


def test_cuda_provider_that_cannot_load(tiny_model, monkeypatch):
    """onnxruntime-gpu installed, its CUDA libraries missing: an explicit 'cuda' names the missing
    library; 'auto' runs on the CPU and says why (onnxruntime alone would only log it)."""
    import bgeort.session

    missing = "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    monkeypatch.setattr(bgeort.model, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(bgeort.session, "usable_cuda_provider", lambda ort: missing)
    with pytest.raises(DeviceError, match="CUDA provider cannot load: libcublasLt.so.13.*onnxruntime-gpu\\[cuda,cudnn\\]"):
        bgeort.Embedder(tiny_model, device="cuda")
    with pytest.warns(RuntimeWarning, match="running on cpu: .*libcublasLt.so.13"):
        model = bgeort.Embedder(tiny_model, device="auto")
    assert (model.device, model.precision) == ("cpu", "int8")


def test_pipelined_tokenizing_gives_the_same_vectors_and_warnings(tiny_model, monkeypatch):
    """The GPU path tokenizes the next slice while one runs; run here on the CPU session."""
    long_text = " ".join(["guitar"] * 100)
    texts = SENTENCES * 3 + [long_text] + SENTENCES
    plain = bgeort.Embedder(tiny_model, precision="fp32")
    with pytest.warns(TruncationWarning, match=r"1 of 25 inputs .*indices 18\)"):
        expected = plain.encode(texts)
    pipelined = bgeort.Embedder(tiny_model, precision="fp32")
    pipelined._model.pipelined = True
    monkeypatch.setattr(bgeort.model, "PIPELINE_TEXTS", 4)  # 7 slices, the last one short
    slices = []
    encode = pipelined._model.tokenizer.encode
    monkeypatch.setattr(pipelined._model.tokenizer, "encode", lambda texts, **kw: slices.append(len(texts)) or encode(texts, **kw))
    with pytest.warns(TruncationWarning, match=r"1 of 25 inputs .*indices 18\)"):
        vectors = pipelined.encode(texts)
    assert slices == [4, 4, 4, 4, 4, 4, 1]
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession: records the providers it was given."""

    opened: list = []
    runs_on: list | None = None

    def __init__(self, path, sess_options=None, providers=None, disabled_optimizers=None):
        self.providers = providers
        _FakeSession.opened.append(providers)

    def get_providers(self):
        return _FakeSession.runs_on or [name for name, _ in self.providers]

    def get_inputs(self):
        return [type("Input", (), {"name": name}) for name in ("input_ids", "attention_mask", "token_type_ids")]

    def get_outputs(self):
        return [type("Output", (), {"name": name, "shape": None}) for name in ("last_hidden_state", "sentence_embedding")]


def test_cuda_sessions_keep_fp32_out_of_tf32_and_name_a_missing_gpu(tiny_model, monkeypatch):
    import onnxruntime

    import bgeort.session

    fake_ort = type("FakeOrt", (), {name: getattr(onnxruntime, name) for name in ("SessionOptions", "ExecutionMode",
                                                                                  "GraphOptimizationLevel")})
    fake_ort.InferenceSession = _FakeSession
    monkeypatch.setattr(bgeort.session, "import_onnxruntime", lambda: fake_ort)
    monkeypatch.setattr(bgeort.model, "import_onnxruntime", lambda: fake_ort)
    monkeypatch.setattr(bgeort.model, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(bgeort.session, "usable_cuda_provider", lambda ort: None)
    _FakeSession.opened.clear()
    assert bgeort.Embedder(tiny_model, device="cuda:0").precision == "fp16"
    assert bgeort.Embedder(tiny_model, device="cuda:0", precision="fp32").precision == "fp32"
    assert _FakeSession.opened == [
        [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": "1"}), ("CPUExecutionProvider", {})],
        [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": "0"}), ("CPUExecutionProvider", {})]]
    # onnxruntime runs on the CPU when the GPU index does not exist: an error naming the GPUs there are
    monkeypatch.setattr(_FakeSession, "runs_on", ["CPUExecutionProvider"])
    monkeypatch.setattr(bgeort.session, "cuda_device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"cuda:3 .*CUDA sees 2 GPUs \(cuda:0 to cuda:1"):
        bgeort.Embedder(tiny_model, device="cuda:3")


def test_threads_option(tiny_model):
    assert bgeort.Embedder(tiny_model, threads=1).encode(["x"]).shape == (1, 32)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        bgeort.Embedder(tiny_model, threads=0)


def test_small_batches_run_side_by_side_with_the_same_vectors(tiny_model):
    """With 2+ threads on CPU, small batches run concurrently on a second single-threaded session
    (bgeort.model.SIDE_BY_SIDE_TOKENS); big ones on the main session. Same vectors, same order."""
    texts = [" ".join(SENTENCES[i % len(SENTENCES)].split()[: 1 + i % 7]) for i in range(40)]
    serial = bgeort.Embedder(tiny_model, threads=1)
    side = bgeort.Embedder(tiny_model, threads=2)
    expected = serial.encode(texts, batch_size=4)
    got = side.encode(texts, batch_size=4)
    assert serial._model._side is None and side._model._side is not None
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # two batches of 20 x 64 tokens, past the side-by-side size: they run on the main session only
    long_texts = [" ".join(SENTENCES) * 3] * 40
    main_only = bgeort.Embedder(tiny_model, threads=2, batch_size=20, max_batch_tokens=2048)
    with pytest.warns(TruncationWarning):
        np.testing.assert_allclose(main_only.encode(long_texts), serial.encode(long_texts), atol=1e-6)
    assert main_only._model._side is None


def test_the_side_session_opens_only_for_small_graphs_unless_asked(tiny_model, monkeypatch):
    """It holds a second copy of the weights: by default only for graphs up to
    SIDE_SESSION_MAX_BYTES; side_by_side=True/False decides for any graph. Same vectors either way."""
    texts = [" ".join(SENTENCES[i % len(SENTENCES)].split()[: 1 + i % 7]) for i in range(40)]
    expected = bgeort.Embedder(tiny_model, threads=1).encode(texts)
    monkeypatch.setattr(bgeort.model, "SIDE_SESSION_MAX_BYTES", 0)  # every graph is "large"
    for option, opened in ((None, False), (True, True), (False, False)):
        model = bgeort.Embedder(tiny_model, threads=2, side_by_side=option)
        np.testing.assert_allclose(model.encode(texts, batch_size=4), expected, atol=1e-6)
        assert (model._model._side is not None) is opened, option
    monkeypatch.setattr(bgeort.model, "SIDE_SESSION_MAX_BYTES", 64 * 2**20)
    assert bgeort.Embedder(tiny_model, threads=2)._model.side_by_side  # a tiny graph: on
    with pytest.raises(ValueError, match="side_by_side must be True, False or None"):
        bgeort.Embedder(tiny_model, side_by_side="yes")


def test_an_fp16_graph_on_the_cpu_counts_as_its_float32_weights_for_the_side_session(tiny_model, monkeypatch):
    """onnxruntime's CPU provider holds an fp16 graph's weights in float32 as well (bge-small: +207
    MB for a 66 MB graph), so the side session's size rule counts such a graph 3x; on CUDA 1x."""
    fp16 = bgeort.Embedder(tiny_model, precision="fp16", device="cpu", threads=1)
    variant = fp16.manifest.variants["fp16"]
    size = variant.total_bytes
    assert bgeort.model.resident_bytes(variant, "fp16", "cpu") == 3 * size
    assert bgeort.model.resident_bytes(variant, "fp16", "cuda:0") == size
    monkeypatch.setattr(bgeort.model, "SIDE_SESSION_MAX_BYTES", 2 * size)  # the file fits, its session not
    assert not bgeort.Embedder(tiny_model, precision="fp16", device="cpu", threads=2)._model.side_by_side
    int8 = bgeort.Embedder(tiny_model, precision="int8", device="cpu", threads=2)
    assert int8.manifest.variants["int8"].bytes <= 2 * size and int8._model.side_by_side


def test_spinning_runs_only_and_a_wrong_value(tiny_model):
    model = bgeort.Embedder(tiny_model, threads=2, spinning="runs")
    assert model._model.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    assert model.encode(SENTENCES[:2]).shape == (2, model.dim)
    with pytest.raises(ValueError, match="spinning must be True .* 'runs' .* or False"):
        bgeort.Embedder(tiny_model, spinning="sometimes")


def test_the_side_by_side_session_keeps_the_spinning_choice(tiny_model):
    texts = [" ".join(SENTENCES[i % len(SENTENCES)].split()[: 1 + i % 7]) for i in range(40)]
    quiet = bgeort.Embedder(tiny_model, threads=2, spinning=False)
    quiet.encode(texts, batch_size=4)
    side = quiet._model._side[0].get_session_options()
    assert side.get_session_config_entry("session.intra_op.allow_spinning") == "0"


class RecordingSession:
    """Wraps an onnxruntime session and records the run options of each call."""

    def __init__(self, session):
        self.session, self.options = session, []

    def run(self, outputs, feed, options=None):
        self.options.append(options)
        return self.session.run(outputs, feed, options)


def test_a_call_with_large_batches_hands_the_arena_back_at_its_end(tiny_model, monkeypatch):
    trims = []
    monkeypatch.setattr(bgeort.model, "trim_heap", lambda: trims.append(1))
    model = bgeort.Embedder(tiny_model, threads=1, batch_size=20, max_batch_tokens=2048)
    recorder = model._model.session = RecordingSession(model._model.session)
    expected = bgeort.Embedder(tiny_model, threads=1).encode(SENTENCES)
    np.testing.assert_allclose(model.encode(SENTENCES), expected, atol=1e-6)  # small: the arena is kept
    assert recorder.options and set(recorder.options) == {None} and not trims
    small_runs = len(recorder.options)
    with pytest.warns(TruncationWarning):
        model.encode([" ".join(SENTENCES) * 3] * 40)  # two batches of 20 x 64 tokens
    first, last = recorder.options[small_runs:]
    assert first is None
    assert last.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert trims == [1]  # and the C heap's free pages go back to the OS once, after the call
    options = model._model.session.session.get_session_options()
    assert not options.enable_mem_pattern  # tensors freed as they die: a lower peak on CPU


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_hands_freed_pages_back_on_glibc():
    import ctypes

    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert bgeort.model.trim_heap() is glibc  # on musl there is nothing to call, and nothing fails
    if glibc:
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096  # noqa: E731
        blocks = [np.ones(1 << 15, np.uint8) for _ in range(4000)]  # 128 MiB of heap-sized blocks
        del blocks[:-1]  # all but the last freed: glibc keeps them below the top of the heap
        before = rss()
        bgeort.model.trim_heap()
        assert rss() < before - 64 * 2**20


@pytest.fixture
def folder_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "copy")


def test_hash_mismatch_names_the_file_and_the_rebuild(folder_copy):
    with open(folder_copy / "model_unfused.onnx", "ab") as stream:  # the graph 'fp32' runs on CPU
        stream.write(b"\0")
    with pytest.raises(ModelFolderError,
                       match=r"model_unfused.onnx does not match the sha256.*make export SOURCE=.*tiny-bert"):
        bgeort.Embedder(folder_copy, precision="fp32")


def test_unloadable_corrupt_file_is_reported_as_corrupt(folder_copy):
    (folder_copy / "model_int8.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelFolderError, match=r"model_int8.onnx does not match the sha256"):
        bgeort.Embedder(folder_copy)


def test_missing_model_file(folder_copy):
    (folder_copy / "model_int8.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"model_int8.onnx is missing.*make export"):
        bgeort.Embedder(folder_copy, precision="int8")


def test_newer_manifest_version(folder_copy):
    path = folder_copy / "bgeort.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="format_version 99, newer"):
        bgeort.Embedder(folder_copy)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="bgeort.json is missing"):
        bgeort.Embedder(tmp_path)


def test_cli_embed_and_info(tiny_model):
    out = subprocess.run([sys.executable, "-m", "bgeort", "embed", str(tiny_model), "--text", "hello", "--text",
                          "world"],
                         capture_output=True, text=True, check=True).stdout
    assert "shape (2, 32)" in out and "precision='int8'" in out
    info = subprocess.run([sys.executable, "-m", "bgeort", "info", str(tiny_model)],
                          capture_output=True, text=True, check=True).stdout
    assert json.loads(info)["pooling"] == "mean"
    bad = subprocess.run([sys.executable, "-m", "bgeort", "embed", str(tiny_model) + "-nope", "--text", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "does not exist" in bad.stderr


# bge-small shape (12 x 384, 512 positions, CLS pooling, the table row)

def test_query_instruction_is_prepended_to_queries_only(bge_small_shaped):
    model = bgeort.Embedder(bge_small_shaped, precision="fp32")
    instruction = model.manifest.query_instruction
    assert instruction == "Represent this sentence for searching relevant passages: "
    query = "what is a panda?"
    np.testing.assert_allclose(model.encode_queries([query]), model.encode([instruction + query]), atol=1e-6)
    np.testing.assert_allclose(model.encode_corpus([query]), model.encode([query]), atol=1e-6)
    assert model.encode_queries(query).shape == (384,)
    custom = bgeort.Embedder(bge_small_shaped, precision="fp32", query_instruction_for_retrieval="")
    np.testing.assert_allclose(custom.encode_queries([query]), model.encode([query]), atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_vector_does_not_depend_on_batch_neighbours(bge_small_shaped, precision):
    model = bgeort.Embedder(bge_small_shaped, precision=precision)
    short = ["what is a panda?", "The giant panda is a bear species endemic to China."]
    long_texts = [" ".join(["bamboo forest"] * 300), " ".join(["mountain"] * 600)]  # past 512 tokens
    alone = model.encode(short)
    with pytest.warns(TruncationWarning):
        mixed = model.encode(long_texts + short, batch_size=4)  # one batch, padded to 512
    cosine = (alone * mixed[2:]).sum(axis=1)
    assert cosine.min() >= 0.99999
    assert model.token_counts(long_texts).min() > 512


def test_fp16_variant_pools_inside_the_graph(tiny_model, tiny):
    """The CUDA variant (fp16, pooling in the graph) checked on the CPU against fp32 + numpy pooling."""
    fp16 = bgeort.Embedder(tiny_model, precision="fp16", device="cpu")
    assert fp16._model.output_name == "sentence_embedding"
    assert bgeort.load_manifest(tiny_model).variants["fp16"].output == "sentence_embedding"
    cosine = (fp16.encode(SENTENCES) * tiny.encode(SENTENCES)).sum(axis=1)
    assert cosine.min() >= 0.999


def test_iobinding_run_equals_plain_run(tiny_model):
    """The IOBinding path the CUDA device uses, exercised with CPU memory."""
    from bgeort.model import run_bound

    model = bgeort.Embedder(tiny_model, precision="fp16", device="cpu")
    session = model._model.session
    feed = model._model.tokenizer.pad(model._model.tokenizer.encode(SENTENCES), np.arange(len(SENTENCES)))
    feed = {name: feed[name] for name in model._model.input_names}
    plain = session.run(["sentence_embedding"], feed)[0]
    (bound,) = run_bound(session, feed, ["sentence_embedding"], "cpu")
    assert bound.shape == (len(SENTENCES), 32)
    np.testing.assert_array_equal(bound, plain)
