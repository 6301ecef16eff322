"""export/narrow.py: the first token's row only, where only it is read, and the same outputs."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.narrow import first_token_only

H, V = 8, 40


def token_graph(body, outputs, rng, extra_inits=()):
    """input_ids [batch, sequence] -> x = table[input_ids] [batch, sequence, H] -> `body` nodes."""
    inits = [numpy_helper.from_array(rng.normal(size=(V, H)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(size=(H, H)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(H,)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             *extra_inits]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x"], axis=0, name="embed"), *body]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                         ["batch", "sequence"])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, ids):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})


def ids(rng, batch=3, sequence=9):
    return rng.integers(0, V, (batch, sequence)).astype(np.int64)


def check_same(model, rng):
    """Narrow a copy; its outputs must equal the original's (to float rounding: a MatMul of one row
    may take another kernel than one of many). Returns (count, narrowed model)."""
    narrowed = onnx.ModelProto()
    narrowed.CopyFrom(model)
    count = first_token_only(narrowed)
    for batch, sequence in ((1, 1), (3, 9), (2, 30)):
        x = ids(rng, batch, sequence)
        for want, got in zip(run(model, x), run(narrowed, x)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return count, narrowed


def test_a_row_wise_chain_before_the_first_token_gather_runs_on_one_row():
    rng = np.random.default_rng(0)
    body = [helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["hb"]),
            helper.make_node("Erf", ["hb"], ["e"]),
            helper.make_node("Add", ["e", "x"], ["r"]),  # residual: x is also read by the MatMul
            helper.make_node("LayerNormalization", ["r", "b", "b"], ["ln"], axis=-1),
            helper.make_node("Gather", ["ln", "zero"], ["cls"], axis=1, name="pool")]
    model = token_graph(body, ["cls"], rng)
    count, narrowed = check_same(model, rng)
    assert count == 5  # MatMul, Add, Erf, Add, LayerNormalization
    slices = [n for n in narrowed.graph.node if n.op_type == "Slice"]
    assert [n.input[0] for n in slices] == ["x"]  # cut once, where the rows come from
    # the shapes really shrink: the LayerNorm's output is [batch, 1, H]
    probe = onnx.ModelProto()
    probe.CopyFrom(narrowed)
    probe.graph.output.append(helper.make_tensor_value_info("ln", TensorProto.FLOAT, None))
    assert run(probe, ids(rng, 2, 11))[1].shape == (2, 1, H)


def test_a_tensor_also_read_in_full_is_cut_not_narrowed():
    """The LayerNorm's output is a graph output too: it stays whole, and only its reader is narrowed."""
    rng = np.random.default_rng(1)
    body = [helper.make_node("LayerNormalization", ["x", "b", "b"], ["ln"], axis=-1),
            helper.make_node("MatMul", ["ln", "w"], ["h"]),
            helper.make_node("Gather", ["h", "zero"], ["cls"], axis=1)]
    model = token_graph(body, ["cls", "ln"], rng)
    count, narrowed = check_same(model, rng)
    assert count == 1
    assert run(narrowed, ids(rng, 2, 7))[1].shape == (2, 7, H)


@pytest.mark.parametrize("op, attrs, inputs, narrowed", [
    ("Softmax", {"axis": 1}, [], 1),  # mixes tokens: only the Add after it
    ("Softmax", {"axis": -1}, [], 2),
    # [batch, 1, H], the max over tokens: neither a token tensor nor fixed, so the Add stays whole too
    ("ReduceMax", {"axes": [1], "keepdims": 1}, [], 0),
    ("ReduceMax", {"axes": [-1], "keepdims": 1}, [], 2),
    ("LayerNormalization", {"axis": 1}, ["b_seq", "b_seq"], 1),
    ("CumSum", {}, ["one"], 1),  # not a known row-wise operator
])
def test_operators_that_mix_tokens_are_never_narrowed(op, attrs, inputs, narrowed):
    rng = np.random.default_rng(2)
    extra = [numpy_helper.from_array(np.ones((1, H), np.float32), "b_seq"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    body = [helper.make_node(op, ["x", *inputs], ["y"], **attrs),
            helper.make_node("Add", ["y", "b"], ["z"]) if op != "ReduceMax" else helper.make_node("Add", ["y", "x"], ["z"]),
            helper.make_node("Gather", ["z", "zero"], ["cls"], axis=1)]
    model = token_graph(body, ["cls"], rng, extra)
    count, _ = check_same(model, rng)
    assert count == narrowed


def test_a_value_that_varies_along_the_sequence_stops_it():
    """y = x + p with p [sequence, H] (position-like, cut from a table by the input's length): p is
    neither a token tensor nor fixed, so the Add keeps every row."""
    rng = np.random.default_rng(3)
    extra = [numpy_helper.from_array(rng.normal(size=(64, H)).astype(np.float32), "positions"),
             numpy_helper.from_array(np.array([0], np.int64), "start"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]
    body = [helper.make_node("Shape", ["input_ids"], ["shape"]),
            helper.make_node("Slice", ["shape", "one", "two"], ["length"]),
            helper.make_node("Slice", ["positions", "start", "length", "start"], ["p"]),
            helper.make_node("Add", ["x", "p"], ["y"]),
            helper.make_node("Tanh", ["y"], ["t"]),
            helper.make_node("Gather", ["t", "zero"], ["cls"], axis=1)]
    model = token_graph(body, ["cls"], rng, extra)
    count, _ = check_same(model, rng)
    assert count == 1  # the Tanh only


def test_an_output_pooled_by_its_first_row_becomes_that_row():
    """first_row_outputs: bgeort pools the CLS row in numpy, so the output itself can be one row."""
    rng = np.random.default_rng(5)
    body = [helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "x"], ["r"]),
            helper.make_node("LayerNormalization", ["r", "b", "b"], ["last_hidden_state"], axis=-1)]
    model = token_graph(body, ["last_hidden_state"], rng)
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "sequence"
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = H
    narrowed = onnx.ModelProto()
    narrowed.CopyFrom(model)
    assert first_token_only(narrowed, first_row_outputs=("last_hidden_state",)) == 3
    assert [d.dim_value for d in narrowed.graph.output[0].type.tensor_type.shape.dim][1:] == [1, H]
    x = ids(rng, 3, 12)
    (full,), (first,) = run(model, x), run(narrowed, x)
    assert first.shape == (3, 1, H)
    np.testing.assert_allclose(first[:, 0], full[:, 0], rtol=1e-6, atol=1e-6)


def test_graphs_without_a_first_token_gather_are_left_alone():
    rng = np.random.default_rng(4)
    extra = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(1, np.int64), "one_scalar")]
    mean = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("ReduceMean", ["t"], ["m"], axes=[1], keepdims=0)]
    second = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Gather", ["t", "one_scalar"], ["m"], axis=1)]
    for body in (mean, second):
        model = token_graph(body, ["m"], rng, extra)
        before = model.SerializeToString()
        assert first_token_only(model) == 0
        assert model.SerializeToString() == before


def test_exported_cls_embedder_and_rerankers_narrow_every_variant(bge_small_shaped, xlmr_reranker, bert_reranker,
                                                                  tiny_model):
    """Exported folders say what was narrowed; their parity against PyTorch was checked at export
    (export/verify.py) on the narrowed graphs."""
    for folder in (bge_small_shaped, xlmr_reranker, bert_reranker):
        manifest = json.loads((folder / "bgeort.json").read_text())
        for precision, variant in manifest["variants"].items():
            assert variant["parity"]["first_token_nodes"] > 0, (folder.name, precision)
            assert variant["parity"]["passed"]
    # the CPU graphs' token states are the first token's row only, pooled (CLS) in numpy
    for name in ("model_unfused.onnx", "model_int8.onnx", "model.onnx"):
        session = ort.InferenceSession(str(bge_small_shaped / name), providers=["CPUExecutionProvider"])
        feed = {i.name: np.ones((2, 9), np.int64) for i in session.get_inputs()}
        assert session.run(["last_hidden_state"], feed)[0].shape == (2, 1, 384), name
    mean_pooled = json.loads((tiny_model / "bgeort.json").read_text())["variants"]
    assert not any("first_token_nodes" in v["parity"] for v in mean_pooled.values())


def test_probing_leaves_a_graph_it_cannot_narrow_exactly_as_it_was():
    """The probes run the model itself with its nodes renamed for a moment (no copy of the weights is
    made); the names must come back, and nothing else may change."""
    rng = np.random.default_rng(5)
    body = [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=1, name="mix"),
            helper.make_node("Add", ["y", "x"], ["z"], name="add"),
            helper.make_node("Gather", ["z", "zero"], ["cls"], axis=1, name="first")]
    model = token_graph(body, ["cls"], rng)
    before = model.SerializeToString()
    assert first_token_only(model) == 0
    assert model.SerializeToString() == before
