"""Graphs past graphfile.SINGLE_FILE_BYTES of weights (16 MiB: every real BGE variant; past
protobuf's 2 GiB it is the only way) keep them in one data file beside them. Tiny generated models
are pushed through that path by optimum's FORCE_ONNX_EXTERNAL_DATA (it then writes model.onnx_data,
as for a large model) and a lowered graphfile.SINGLE_FILE_BYTES, and checked against their
single-file exports."""

import shutil

import numpy as np
import onnx
import pytest

import bgeort
from bgeort.errors import ModelFolderError
from bgeort.manifest import load_manifest, sha256_file
from export import export_model, graphfile, verify
from export.source import ExportError

pytestmark = pytest.mark.export

TEXTS = ["hello world", "the giant panda is a bear of china", "", "a man is playing the guitar on the street"]
PAIRS = [("what is panda?", "hi"), ("what is panda?", "the giant panda is a bear species of china."),
         ("hello world", "a cat on the dog"), ("", "bamboo"), ("the bear", "")]


def export_with_data_files(source, out, *, single_file_bytes: int, **options):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
        patch.setattr(graphfile, "SINGLE_FILE_BYTES", single_file_bytes)
        return export_model(str(source), out=out, **options)


@pytest.fixture(scope="session")
def external_model(tiny_source, tmp_path_factory):
    """The tiny embedder with every graph's weights in a data file."""
    return export_with_data_files(tiny_source, tmp_path_factory.mktemp("external"), single_file_bytes=0)


@pytest.fixture(scope="session")
def large_shaped_reranker(xlmr_reranker, tmp_path_factory):
    """The tiny XLM-RoBERTa reranker, split as bge-reranker-large is: the fp32 graphs over the limit,
    fp16 and int8 (half the weight bytes or less) under it."""
    single = load_manifest(xlmr_reranker)
    limit = max(_weight_bytes(xlmr_reranker / single.variants[p].file) for p in ("fp16", "int8"))
    assert limit < min(_weight_bytes(xlmr_reranker / single.variants[p].file) for p in ("fp32", "fp32-unfused"))
    return export_with_data_files(single.provenance["source"], tmp_path_factory.mktemp("external"),
                                  single_file_bytes=limit)


def _weight_bytes(graph_file):
    return graphfile.weight_bytes(onnx.load(str(graph_file), load_external_data=False))


def test_each_variant_has_one_named_data_file_listed_and_hashed(external_model):
    manifest = load_manifest(external_model)
    assert set(manifest.variants) == {"fp32", "fp32-unfused", "int8", "fp16"}
    expected = {"bgeort.json", "tokenizer.json"}
    for precision, variant in manifest.variants.items():
        assert variant.data_file == variant.file + ".data", precision
        data = external_model / variant.data_file
        assert sha256_file(data) == variant.data_sha256 and data.stat().st_size == variant.data_bytes
        assert variant.parity["passed"], precision
        # readable by whoever can read the graph (onnx writes data files owner-only)
        assert data.stat().st_mode & 0o777 == (external_model / variant.file).stat().st_mode & 0o777, precision
        expected |= {variant.file, variant.data_file}
    # no optimum model.onnx_data, no per-tensor files, no leftovers of the staging
    assert {p.name for p in external_model.iterdir()} == expected


def test_data_file_variants_give_the_single_file_outputs(external_model, tiny_model):
    for precision in ("fp32", "fp32-unfused", "int8", "fp16"):
        got = bgeort.Embedder(external_model, precision=precision).encode(TEXTS)
        want = bgeort.Embedder(tiny_model, precision=precision).encode(TEXTS)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=precision)


def test_large_shaped_reranker_keeps_the_graphs_that_fit_single(large_shaped_reranker, xlmr_reranker):
    manifest = load_manifest(large_shaped_reranker)
    assert manifest.variants["fp32"].data_file == "model.onnx.data"
    assert manifest.variants["fp32-unfused"].data_file == "model_unfused.onnx.data"
    assert manifest.variants["fp16"].data_file is None and manifest.variants["int8"].data_file is None
    assert not (large_shaped_reranker / "model_fp16.onnx.data").exists()
    assert not (large_shaped_reranker / "model_int8.onnx.data").exists()
    # the first-token pass (export/narrow.py) ran on the data-file graphs as well
    assert all(manifest.variants[p].parity["first_token_nodes"] > 0 for p in manifest.variants)
    for precision in manifest.variants:
        got = bgeort.Reranker(large_shaped_reranker, precision=precision).compute_score(PAIRS)
        want = bgeort.Reranker(xlmr_reranker, precision=precision).compute_score(PAIRS)
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=precision)
    # and the fp32 logits still match PyTorch (the parity check ran on the data-file graph)
    reference = verify.torch_reranker_reference(manifest.provenance["source"], PAIRS, max_length=manifest.max_length)
    fp32 = bgeort.Reranker(large_shaped_reranker, precision="fp32").compute_score(PAIRS)
    assert np.abs(fp32 - reference.vectors).max() <= 1e-3


@pytest.fixture
def external_copy(external_model, tmp_path):
    return shutil.copytree(external_model, tmp_path / "copy")


@pytest.mark.parametrize("verify_hashes", [True, False])
@pytest.mark.parametrize("precision, graph", [("fp32-unfused", "model_unfused.onnx"), ("int8", "model_int8.onnx"),
                                              ("fp16", "model_fp16.onnx")])
def test_missing_data_file_names_it_and_the_rebuild(external_copy, precision, graph, verify_hashes):
    (external_copy / f"{graph}.data").unlink()
    with pytest.raises(ModelFolderError, match=rf"{graph}.data \(the weights of {graph}\) is missing from the "
                                               r"model folder.*make export SOURCE=.*tiny-bert"):
        bgeort.Embedder(external_copy, precision=precision, verify=verify_hashes)


def test_altered_data_file_is_reported_as_corrupt(external_copy):
    data = external_copy / "model_unfused.onnx.data"
    weights = bytearray(data.read_bytes())
    weights[len(weights) // 2] ^= 0xFF  # same size, one weight changed: onnxruntime would load it
    data.write_bytes(bytes(weights))
    with pytest.raises(ModelFolderError, match=r"model_unfused.onnx.data does not match the sha256.*make export"):
        bgeort.Embedder(external_copy, precision="fp32-unfused")


def test_truncated_data_file_is_reported_as_corrupt_not_as_unloadable(external_copy):
    data = external_copy / "model_int8.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelFolderError, match=r"model_int8.onnx.data does not match the sha256"):
        bgeort.Embedder(external_copy, precision="int8")


def test_verify_false_opens_without_hashing(external_copy, tiny_model):
    got = bgeort.Embedder(external_copy, precision="fp32", verify=False).encode(TEXTS)
    np.testing.assert_allclose(got, bgeort.Embedder(tiny_model, precision="fp32").encode(TEXTS), atol=1e-6)


def test_a_failing_variant_leaves_no_data_file(tiny_source, tmp_path, monkeypatch):
    monkeypatch.setitem(verify.THRESHOLDS, "int8", {"mean_cosine": 1.1})
    folder = export_with_data_files(tiny_source, tmp_path, single_file_bytes=0, precisions=("fp32", "int8"))
    assert "int8" not in load_manifest(folder).variants
    assert not (folder / "model_int8.onnx").exists() and not (folder / "model_int8.onnx.data").exists()
    assert (folder / "model.onnx.data").is_file()


def _graph_with_weights(rows: int = 64):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(rows * 16, dtype=np.float32).reshape(rows, 16), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_save_graph_rewrites_the_data_file_rather_than_appending(tmp_path, monkeypatch):
    monkeypatch.setattr(graphfile, "SINGLE_FILE_BYTES", 0)
    path = tmp_path / "m.onnx"
    graphfile.save_graph(_graph_with_weights(), path)
    size = (tmp_path / "m.onnx.data").stat().st_size
    assert size == 64 * 16 * 4 and graphfile.data_file(path) == tmp_path / "m.onnx.data"
    graphfile.save_graph(onnx.load(str(path)), path)  # in place, as add_pooling does
    assert (tmp_path / "m.onnx.data").stat().st_size == size
    monkeypatch.setattr(graphfile, "SINGLE_FILE_BYTES", 2**31)
    graphfile.save_graph(onnx.load(str(path)), path)  # fits now: one file, the old data file gone
    assert not (tmp_path / "m.onnx.data").exists() and graphfile.data_file(path) is None
    x = np.ones((1, 64), np.float32)
    session = graphfile.cpu_session(onnx.load(str(path)), tmp_path)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ np.arange(64 * 16, dtype=np.float32).reshape(64, 16))


def test_data_file_accepts_only_the_one_named_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(_graph_with_weights(), str(path), save_as_external_data=True, location="m.onnx_data",
                    size_threshold=0)  # optimum's name for it
    with pytest.raises(ExportError, match=r"reads its weights from \['m.onnx_data'\], expected the one file m.onnx.data"):
        graphfile.data_file(path)


def test_ranges_session_reads_the_data_file_from_the_graphs_folder(tmp_path, monkeypatch):
    """int8 calibration runs the plain graph without loading its weights into the graph (a graph
    past 2 GiB cannot be serialized with them); onnxruntime reads them from the data file."""
    monkeypatch.setattr(graphfile, "SINGLE_FILE_BYTES", 0)
    path = tmp_path / "m.onnx"
    graphfile.save_graph(_graph_with_weights(), path)
    monkeypatch.chdir(tmp_path.parent)  # not where the data file is
    session = graphfile.cpu_session(onnx.load(str(path), load_external_data=False), tmp_path)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ np.arange(64 * 16, dtype=np.float32).reshape(64, 16))


def test_shapes_are_folded_with_the_weights_left_in_their_file(external_model):
    """The export folds the plain graph's shape arithmetic (and quantize_int8 its own copy) before
    loading the weights: a graph past 2 GiB cannot be serialized for onnxruntime with them in it."""
    from export.simplify import fold_shapes

    graph = external_model / "model_unfused.onnx"
    assert load_manifest(external_model).variants["fp32-unfused"].parity["folded_shape_tensors"] > 0
    lean = onnx.load(str(graph), load_external_data=False)
    assert graphfile.external_locations(lean) == {"model_unfused.onnx.data"}  # still beside its data file
    assert "Shape" not in {n.op_type for n in lean.graph.node if n.output[0].startswith("/encoder")}
    assert fold_shapes(lean, data_folder=external_model) == fold_shapes(onnx.load(str(graph))) == 0  # done once