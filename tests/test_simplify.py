"""Folding the shape arithmetic of a graph (export/simplify.py): the folded graph must compute the
same values as the original for every input shape, not only the probed ones."""

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.simplify import PROBE_SHAPES, fold_shapes  # noqa: E402

pytestmark = pytest.mark.export
H, D = 4, 8  # heads, head size


def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value), name))


def heads_graph():
    """As optimum's BERT attention: reshape [b, s, H*D] to [b, -1, H, D] with the batch read from
    Shape, transpose, and scale by 1/sqrt(D) computed from Shape; plus one Reshape whose target comes
    from the input's values (never foldable)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        const("zero", np.array(0, np.int64)), const("axes0", np.array([0], np.int64)),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),
        const("rest", np.array([-1, H, D], np.int64)),
        helper.make_node("Concat", ["batch1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["x4"]),
        helper.make_node("Transpose", ["x4"], ["xt"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["xt"], ["shape_t"]),
        const("last", np.array([-1], np.int64)), const("end", np.array([2 ** 62], np.int64)),
        helper.make_node("Slice", ["shape_t", "last", "end"], ["d"]),
        helper.make_node("Cast", ["d"], ["d_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["d_f"], ["sqrt_d"]),
        const("one", np.array(1.0, np.float32)),
        helper.make_node("Div", ["one", "sqrt_d"], ["scale"]),
        helper.make_node("Mul", ["xt", "scale"], ["y"]),
        # a target read from x's contents: must stay as it is
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        helper.make_node("Cast", ["peak"], ["peak_i"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["peak_i", "axes0"], ["peak1"]),
        const("minus1", np.array([-1], np.int64)),
        helper.make_node("Concat", ["peak1", "minus1"], ["target2"], axis=0),
        helper.make_node("Reshape", ["x", "target2"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", H * D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", H, "s", D]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_shape_arithmetic_becomes_constants_and_values_are_unchanged():
    original = heads_graph()
    folded = heads_graph()
    assert fold_shapes(folded) >= 2  # the Reshape target and the scale
    # the probe ran the model itself with other outputs for a moment: its own are back
    assert folded.graph.output == original.graph.output
    kinds = [n.op_type for n in folded.graph.node]
    # only the value-dependent target's nodes are left of the arithmetic
    assert kinds.count("Shape") == 0 and kinds.count("Sqrt") == 0 and kinds.count("Concat") == 1
    target = next(i for i in folded.graph.initializer if i.name == "target")
    assert numpy_helper.to_array(target).tolist() == [0, -1, H, D]
    rng = np.random.default_rng(0)
    for batch, length in [(1, 1), (4, 9), (2, 64), *PROBE_SHAPES]:
        x = rng.uniform(-1, 1, (batch, length, H * D)).astype(np.float32)
        x[0, 0, 0] = 2.0  # the value-dependent Reshape's first dimension: 2 divides every size here
        want, got = run(original, x), run(folded, x)
        # (onnxruntime may round x * (1/sqrt(D)) and x / sqrt(D) apart by one unit in the last place)
        np.testing.assert_allclose(got[0], want[0], rtol=3e-7, atol=0)
        np.testing.assert_array_equal(got[1], want[1])


def test_a_graph_without_shape_arithmetic_is_left_alone():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fold_shapes(model) == 0 and [n.op_type for n in model.graph.node] == ["Relu"]


def model_of(nodes, outputs, *, width=H * D):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", width])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def same_values_at_unprobed_shapes(build):
    """Fold build()'s graph; it must load and give the original's values at shapes never probed."""
    original, folded = build(), build()
    fold_shapes(folded)  # (onnxruntime loading it below is the check that it is still a graph)
    rng = np.random.default_rng(1)
    for batch, length in [(1, 1), (4, 9), (2, 64), (1, 20)]:
        x = rng.uniform(-1, 1, (batch, length, H * D)).astype(np.float32)
        x[0, 0, :3] = 3.0
        for got, want in zip(run(folded, x), run(original, x)):
            np.testing.assert_array_equal(got, want)
    return folded


def test_a_target_also_read_by_another_node_keeps_its_values():
    """The 0/-1 form means something only to Reshape: an Expand reading the same target keeps it."""
    def build():
        nodes = [helper.make_node("Shape", ["x"], ["shape"]), const("two", np.array([2], np.int64)),
                 const("zero1", np.array([0], np.int64)),
                 helper.make_node("Slice", ["shape", "zero1", "two"], ["bs"]),
                 const("tail", np.array([H, D], np.int64)),
                 helper.make_node("Concat", ["bs", "tail"], ["target"], axis=0),
                 helper.make_node("Reshape", ["x", "target"], ["y"]),
                 const("one", np.ones((1, 1, 1, 1), np.float32)),
                 helper.make_node("Expand", ["one", "target"], ["z"])]
        return model_of(nodes, ["y", "z"])

    folded = same_values_at_unprobed_shapes(build)
    assert "target" not in {i.name for i in folded.graph.initializer}


def test_a_value_equal_at_the_small_probes_only_is_not_folded():
    """ceil(s / 16) is 1 for every sequence up to 16; the (4, 37) probe tells it apart."""
    def build():
        nodes = [helper.make_node("Shape", ["x"], ["shape"]), const("one_i", np.array([1], np.int64)),
                 const("two", np.array([2], np.int64)),
                 helper.make_node("Slice", ["shape", "one_i", "two"], ["s"]),
                 const("fifteen", np.array([15], np.int64)), const("sixteen", np.array([16], np.int64)),
                 helper.make_node("Add", ["s", "fifteen"], ["s15"]),
                 helper.make_node("Div", ["s15", "sixteen"], ["blocks"]),
                 helper.make_node("Cast", ["blocks"], ["blocks_f"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["x", "blocks_f"], ["y"])]
        return model_of(nodes, ["y"])

    same_values_at_unprobed_shapes(build)


def test_a_shape_read_from_the_inputs_contents_is_not_folded():
    """Shape of NonZero(x > 2) depends on x's values: 0 for every probe (ones, zeros), not in general."""
    def build():
        nodes = [const("half", np.array(2.0, np.float32)), helper.make_node("Greater", ["x", "half"], ["big"]),
                 helper.make_node("NonZero", ["big"], ["where"]), helper.make_node("Shape", ["where"], ["count"]),
                 helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceSum", ["count_f"], ["total"], keepdims=0),
                 helper.make_node("Mul", ["x", "total"], ["y"])]
        return model_of(nodes, ["y"])

    same_values_at_unprobed_shapes(build)


def test_a_node_with_an_output_still_needed_is_kept():
    """Split of x's float shape into b, s, H*D: H*D is constant, s is still read at run time."""
    def build():
        nodes = [helper.make_node("Shape", ["x"], ["shape"]),
                 helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
                 helper.make_node("Split", ["shape_f"], ["b_f", "s_f", "width_f"], axis=0, num_outputs=3),
                 helper.make_node("Div", ["x", "width_f"], ["y"]),
                 helper.make_node("Mul", ["x", "s_f"], ["z"])]
        return model_of(nodes, ["y", "z"])

    same_values_at_unprobed_shapes(build)


def test_allowzero_reshapes_are_left_alone():
    def build():
        nodes = [helper.make_node("Shape", ["x"], ["shape"]), const("zero1", np.array([0], np.int64)),
                 const("one1", np.array([1], np.int64)),
                 helper.make_node("Slice", ["shape", "zero1", "one1"], ["b"]),
                 const("rest", np.array([-1, H, D], np.int64)),
                 helper.make_node("Concat", ["b", "rest"], ["target"], axis=0),
                 helper.make_node("Reshape", ["x", "target"], ["y"], allowzero=1)]
        return model_of(nodes, ["y"])

    folded = same_values_at_unprobed_shapes(build)
    assert "target" not in {i.name for i in folded.graph.initializer}


def test_graphs_with_control_flow_are_not_folded():
    branch = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0)], "then", [],
                               [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), const("truth", np.array(True)),
             helper.make_node("If", ["truth"], ["peak"], then_branch=branch, else_branch=branch),
             helper.make_node("Mul", ["x", "peak"], ["y"])]
    model = model_of(nodes, ["y"])
    assert fold_shapes(model) == 0 and len(model.graph.node) == 4
