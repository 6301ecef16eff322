"""The export pipeline on generated models: what it writes, what it refuses, and how it fails."""

import json
import os

import pytest

from bgeort.manifest import load_manifest, sha256_file
from export import export_model, int8, stages, verify
from export.families import EN_QUERY_INSTRUCTION, FAMILIES
from export.source import ExportError, resolve_source
from tests.conftest import TINY_VOCAB

pytestmark = pytest.mark.export


def test_generic_path_reads_the_sentence_transformers_folder(tiny_model):
    manifest = load_manifest(tiny_model)
    assert (manifest.kind, manifest.pooling, manifest.normalize, manifest.max_length, manifest.dim) == \
        ("embedder", "mean", True, 64, 32)
    assert manifest.query_instruction == ""
    found = manifest.provenance["settings_from"]["found_in_source"]
    assert found["tokenizer.json truncation"]["max_length"] == 16  # seen, recorded, not used
    assert manifest.provenance["settings_from"]["origin"]["max_length"] == "sentence-transformers files"


def test_written_tokenizer_has_no_padding_or_truncation(tiny_model):
    data = json.loads((tiny_model / "tokenizer.json").read_text())
    assert data["padding"] is None and data["truncation"] is None


def test_every_variant_is_written_verified_and_hashed(tiny_model):
    manifest = load_manifest(tiny_model)
    assert set(manifest.variants) == {"fp32", "fp32-unfused", "int8", "fp16"}
    for precision, variant in manifest.variants.items():
        path = tiny_model / variant.file
        assert sha256_file(path) == variant.sha256 and path.stat().st_size == variant.bytes
        parity = variant.parity
        assert parity["passed"] and not parity["failures"], precision
        assert parity["reference"].startswith("PyTorch")
    assert manifest.variants["fp32"].parity["max_abs_diff"] <= 1e-4
    assert manifest.variants["fp32"].parity["min_cosine"] >= 0.99999
    quantized = manifest.variants["int8"].parity["quantized_ops"]
    # first and last FFN output stay fp32 (with 2 layers: both); the word-embedding table is int8
    assert (quantized["quantized_matmuls"], quantized["kept_fp32"], quantized["gelu_shifted"]) == (6 * 2 - 2, 2, 0)
    # Q, K and V read one input: 4 integer MatMuls a layer, less the kept FFN output
    assert quantized["MatMulIntegerToFloat"] == 4 * 2 - 2
    # the per-layer shape arithmetic became constants
    assert quantized["folded_shape_tensors"] >= 2 * 4
    assert quantized["int8_embedding_rows"] == len(TINY_VOCAB)
    # LayerNorm outputs feeding weight MatMuls: embeddings, then per layer the attention output's and
    # (but for the last layer) the FFN output's; ranges from the calibration texts
    assert quantized["smoothed_inputs"] == 1 + 2 + 1 and quantized["calibration_texts"] > 30
    assert "avx2" in manifest.provenance["export_cpu"]["flags"]
    assert manifest.variants["fp32"].parity["fusions"]["Attention"] == 2
    assert manifest.provenance["versions"]["torch"].startswith("2.")
    assert manifest.provenance["opset"] >= 14
    assert not [p for p in tiny_model.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_family_row_sets_bge_settings(bge_small_shaped):
    manifest = load_manifest(bge_small_shaped)
    row = FAMILIES["bge-small-en-v1.5"]
    assert bge_small_shaped.name == "bge-small-en-v1.5"
    assert (manifest.pooling, manifest.normalize, manifest.max_length, manifest.dim) == ("cls", True, 512, 384)
    assert manifest.query_instruction == row.query_instruction == EN_QUERY_INSTRUCTION
    assert manifest.passage_instruction == ""
    assert manifest.variants["fp32"].parity["fusions"]["Attention"] == 12
    assert manifest.variants["fp32"].parity["passed"]


def test_zh_rows_use_the_model_card_instruction():
    assert FAMILIES["bge-base-zh-v1.5"].query_instruction == "为这个句子生成表示以用于检索相关文章:"
    embedders = [row for row in FAMILIES.values() if row.kind == "embedder"]
    assert {row.pooling for row in embedders} == {"cls"} and len(embedders) == 7  # six v1.5 rows and bge-m3


def test_a_variant_failing_parity_is_not_written(tiny_source, tmp_path, monkeypatch):
    # An impossible bound for int8: the pipeline must drop the variant and say why.
    monkeypatch.setitem(verify.THRESHOLDS, "int8", {"mean_cosine": 1.1})
    folder = export_model(str(tiny_source), out=tmp_path, precisions=("fp32", "int8"))
    manifest = load_manifest(folder)
    assert "int8" not in manifest.variants
    assert not (folder / "model_int8.onnx").exists()
    assert set(manifest.variants) == {"fp32", "fp32-unfused"}


def test_interrupted_export_leaves_no_folder_and_keeps_the_old_one(tiny_source, tmp_path, monkeypatch):
    first = export_model(str(tiny_source), out=tmp_path, name="m", precisions=("fp32",))
    before = sha256_file(first / "bgeort.json")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(int8, "quantize_int8", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(str(tiny_source), out=tmp_path, name="m", precisions=("fp32", "int8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sha256_file(first / "bgeort.json") == before
    load_manifest(first)  # still a valid folder


def test_reexport_replaces_the_folder(tiny_source, tmp_path):
    first = export_model(str(tiny_source), out=tmp_path, name="m", precisions=("fp32",))
    (first / "stale-file").write_text("from the old export")
    second = export_model(str(tiny_source), out=tmp_path, name="m", precisions=("fp32", "int8"))
    assert second == first
    assert not (second / "stale-file").exists()
    assert "int8" in load_manifest(second).variants
    assert os.stat(second).st_mode & 0o755 == 0o755


def test_fusion_shortfall_is_an_error(tiny_model, tmp_path):
    # The tiny graph has 2 layers: asking for 3 must fail loudly, not write a half-fused graph as fine.
    with pytest.raises(ExportError, match="did not fuse every layer"):
        stages.fuse(tiny_model / "model_unfused.onnx", tmp_path / "f.onnx", num_layers=3, num_heads=4, hidden_size=32)


def test_hub_id_offline_fails_fast_naming_the_local_option(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ExportError, match=r"make export SOURCE=/path/to/bge-small-en-v1.5"):
        resolve_source("BAAI/bge-small-en-v1.5")


def test_hub_id_unreachable_fails_naming_the_local_option(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    with pytest.raises(ExportError, match=r"could not download BAAI/bge-small-en-v1.5.*SOURCE=/path/to"):
        resolve_source("BAAI/bge-small-en-v1.5", timeout=2)


@pytest.mark.parametrize("source", ["./no/such/folder", "not a hub id"])
def test_bad_sources(source):
    with pytest.raises(ExportError, match="neither an existing folder nor a hub id"):
        resolve_source(source)


def test_plain_transformers_folder_without_pooling_needs_the_option(tmp_path):
    from tests.conftest import make_bert_source

    source = make_bert_source(tmp_path / "plain-bert", layers=1, hidden=32, heads=4, ffn=64, positions=64,
                              tokenizer_from=None)
    with pytest.raises(ExportError, match="--pooling cls or --pooling mean"):
        export_model(str(source), out=tmp_path / "models")
    folder = export_model(str(source), out=tmp_path / "models", pooling="cls", precisions=())
    manifest = load_manifest(folder)
    assert (manifest.pooling, manifest.max_length) == ("cls", 64)
    assert set(manifest.variants) == {"fp32-unfused"}


def test_sentence_transformers_5_folder_format(tmp_path):
    """sentence-transformers 5 writes module classes under new paths, `"pooling_mode": "cls"`, and the
    max length in tokenizer_config.json instead of sentence_bert_config.json."""
    from tests.conftest import make_bert_source

    source = make_bert_source(tmp_path / "st5-bert", layers=1, hidden=32, heads=4, ffn=64, positions=128,
                              tokenizer_from=None)
    (source / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.sentence_transformer.modules.normalize.Normalize"}]))
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    (source / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "feature-extraction"}))
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["model_max_length"] = 48
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = load_manifest(export_model(str(source), out=tmp_path / "models", precisions=("fp32",)))
    assert (manifest.pooling, manifest.normalize, manifest.max_length) == ("cls", True, 48)


def test_int8_with_8_bit_weights_asks_for_exact_kernels_only_where_needed(tiny_source, tiny_model, tmp_path,
                                                                         monkeypatch):
    import numpy as np

    import bgeort
    import bgeort.session

    key = "session.x64quantprecision"

    def asks_exact(embedder):
        options = embedder._model.session.get_session_options()
        try:
            return options.get_session_config_entry(key) == "1"
        except RuntimeError:  # the option was never set
            return False

    folder = export_model(str(tiny_source), out=tmp_path, name="w8", precisions=("fp32", "int8"), int8_weight_bits=8)
    assert load_manifest(folder).variants["int8"].parity["quantized_ops"]["weight_bits"] == 8
    assert load_manifest(folder).variants["int8"].weight_bits == 8
    assert load_manifest(tiny_model).variants["int8"].weight_bits == 7
    texts = ["the giant panda", "a bear eats bamboo in the mountains of china", ""]
    default = bgeort.Embedder(folder, precision="int8", threads=1)
    assert asks_exact(default) is bgeort.session.this_cpu_needs_exact_int8()

    monkeypatch.setattr(bgeort.session, "this_cpu_needs_exact_int8", lambda: True)  # as on an AVX2-only CPU
    exact = bgeort.Embedder(folder, precision="int8", threads=1)
    assert asks_exact(exact)
    # the integer products are exact either way (VNNI kernels, or the exact ones bgeort already
    # asks for on CPUs without VNNI), so the vectors agree
    np.testing.assert_allclose(exact.encode(texts), default.encode(texts), atol=1e-6)
    # 7-bit weights (the default export) are exact on the fast kernels everywhere: never asked
    assert not asks_exact(bgeort.Embedder(tiny_model, precision="int8", threads=1))
    with pytest.raises(ExportError, match="weight bits must be 7 or 8"):
        export_model(str(tiny_source), out=tmp_path, name="w6", precisions=("int8",), int8_weight_bits=6)


def test_static_int8_activations_export_and_pass_their_parity_check(tiny_source, tiny_model, tmp_path):
    import bgeort

    folder = export_model(str(tiny_source), out=tmp_path, name="static", precisions=("int8",),
                          int8_activations="static")
    variant = load_manifest(folder).variants["int8"]
    assert variant.parity["passed"] and variant.parity["reference"].startswith("PyTorch")
    assert variant.parity["quantized_ops"]["activations"] == "uint8 per tensor, static (calibrated)"
    assert load_manifest(tiny_model).variants["int8"].parity["quantized_ops"]["activations"] == "uint8 per token"
    texts = ["the giant panda", "a bear eats bamboo in the mountains of china"]
    static = bgeort.Embedder(folder, precision="int8", threads=1)
    # held to the PyTorch-checked fp32 of the same weights (the default export's), and to PyTorch itself
    fp32 = bgeort.Embedder(tiny_model, precision="fp32", threads=1).encode(texts)
    assert (static.encode(texts) * fp32).sum(axis=1).min() > 0.98
    manifest = load_manifest(folder)
    reference = verify.torch_reference(tiny_source, texts, pooling=manifest.pooling, normalize=manifest.normalize,
                                       max_length=manifest.max_length).vectors
    assert (static.encode(texts) * reference).sum(axis=1).min() > 0.98
    with pytest.raises(ExportError, match="int8 activations must be one of"):
        export_model(str(tiny_source), out=tmp_path, name="bad", precisions=("int8",), int8_activations="tensor")


def _child_pid_and_sum(a, b):
    return os.getpid(), a + b


def _child_export_error(message):
    from export.source import ExportError

    raise ExportError(message)


def _child_killed():
    os._exit(137)  # what the kernel's out-of-memory killer leaves behind: no exception, no result


def test_stage_runner_runs_a_stage_in_a_process_of_its_own():
    from export.pipeline import StageRunner

    assert StageRunner(False)(_child_pid_and_sum, 2, b=3) == (os.getpid(), 5)
    pid, total = StageRunner(True)(_child_pid_and_sum, 2, b=3)
    assert pid != os.getpid() and total == 5
    with pytest.raises(ExportError, match="the int8 graph is wrong"):
        StageRunner(True)(_child_export_error, "the int8 graph is wrong")
    with pytest.raises(ExportError, match="_child_killed died.*out of memory"):
        StageRunner(True)(_child_killed)


def test_export_with_a_process_per_stage_writes_the_same_graphs(tiny_source, tiny_model, tmp_path):
    """Large sources run each heavy stage in a child process (export/pipeline.py); the folder must
    be the one the in-process export writes."""
    folder = export_model(str(tiny_source), out=tmp_path, separate_stages=True)
    ours, reference = load_manifest(folder), load_manifest(tiny_model)
    assert set(ours.variants) == set(reference.variants) == {"fp32", "fp32-unfused", "int8", "fp16"}
    for precision, variant in ours.variants.items():
        assert variant.parity["passed"]
        assert variant.sha256 == reference.variants[precision].sha256, precision


def test_fusion_with_the_weights_set_aside_writes_what_the_optimizer_writes_in_memory(tiny_source, tmp_path):
    """stages.fuse runs onnxruntime's optimizer on the graph with its weights in a file beside it (the
    optimizer's copies inside one protobuf message otherwise grow to several times the weights);
    the fused file must be the one the optimizer writes from the whole graph in memory."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    plain = tmp_path / "plain.onnx"
    stages.export_onnx(tiny_source, plain, task="feature-extraction", opset=None)
    cwd = os.getcwd()
    fusions = stages.fuse(plain, tmp_path / "fused.onnx", num_layers=2, num_heads=4, hidden_size=32)
    assert os.getcwd() == cwd and fusions["Attention"] == 2
    whole = optimize_model(str(plain), model_type="bert", num_heads=4, hidden_size=32,
                           optimization_options=FusionOptions("bert"), opt_level=0, use_gpu=False)
    whole.save_model_to_file(str(tmp_path / "whole.onnx"))
    assert sha256_file(tmp_path / "fused.onnx") == sha256_file(tmp_path / "whole.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.onnx", "plain.onnx", "whole.onnx"]  # nothing left
