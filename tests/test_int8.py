"""The int8 recipe (export/int8.py) on small hand-built graphs named as optimum names BERT's nodes:
per-token activation scales, the GELU shift, the int8 embedding table, the MatMul count check."""

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.int8 import quantize_int8  # noqa: E402
from export.source import ExportError  # noqa: E402

pytestmark = pytest.mark.export

K, F, N = 64, 96, 48
SCOPE = "/encoder/layer.0"


def save(path, nodes, initializers, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def run(path, **feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def run_as_bgeort(path, **feed):
    """With the session options bgeort opens graphs with: on x86 CPUs without VNNI they ask for the exact
    int8 kernels, which 8-bit weights need (AVX2's 16-bit pair sums saturate; bgeort/session.py)."""
    from bgeort.session import session_options

    options = session_options(ort, threads=1, spinning=True)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def ffn_graph(path, rng, activation="erf", *, hidden_is_output=False):
    """x -> intermediate dense -> activation -> output dense -> y, with biases. activation: 'erf'
    (exact GELU), 'tanh-gelu' (its tanh form) or 'tanh' (not a GELU). hidden_is_output: the first
    MatMul's own output is a graph output as well."""
    act = f"{SCOPE}/intermediate/intermediate_act_fn/"
    inits = {"w_in": rng.normal(0, 0.3, (K, F)).astype(np.float32), "b_in": rng.normal(0, 0.5, F).astype(np.float32),
             "w_out": rng.normal(0, 0.1, (F, N)).astype(np.float32), "b_out": rng.normal(0, 0.1, N).astype(np.float32),
             "sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
             "half": np.array(0.5, np.float32), "c": np.array(0.044715, np.float32),
             "k": np.array(np.sqrt(2 / np.pi), np.float32), "three": np.array(3.0, np.float32)}
    if activation == "erf":
        act_nodes = [helper.make_node("Div", ["h", "sqrt2"], ["g0"], name=act + "Div"),
                     helper.make_node("Erf", ["g0"], ["g1"], name=act + "Erf")]
    elif activation == "tanh-gelu":  # tanh(sqrt(2/pi) * (h + 0.044715 h^3))
        act_nodes = [helper.make_node("Pow", ["h", "three"], ["h3"], name=act + "Pow"),
                     helper.make_node("Mul", ["h3", "c"], ["ch3"], name=act + "Mul_c"),
                     helper.make_node("Add", ["h", "ch3"], ["inner"], name=act + "Add_inner"),
                     helper.make_node("Mul", ["inner", "k"], ["g0"], name=act + "Mul_k"),
                     helper.make_node("Tanh", ["g0"], ["g1"], name=act + "Tanh")]
    if activation == "tanh":
        act_nodes = [helper.make_node("Tanh", ["h"], ["g"], name=act + "Tanh")]
    else:
        act_nodes += [helper.make_node("Add", ["g1", "one"], ["g2"], name=act + "Add"),
                      helper.make_node("Mul", ["h", "g2"], ["g3"], name=act + "Mul"),
                      helper.make_node("Mul", ["g3", "half"], ["g"], name=act + "Mul_1")]
    nodes = [
        helper.make_node("MatMul", ["x", "w_in"], ["h0"], name=f"{SCOPE}/intermediate/dense/MatMul"),
        helper.make_node("Add", ["b_in", "h0"], ["h"], name=f"{SCOPE}/intermediate/dense/Add"),
        *act_nodes,
        helper.make_node("MatMul", ["g", "w_out"], ["y0"], name=f"{SCOPE}/output/dense/MatMul"),
        helper.make_node("Add", ["b_out", "y0"], ["y"], name=f"{SCOPE}/output/dense/Add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])]
    if hidden_is_output:
        outputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["b", "s", F]))
    save(path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])], outputs)
    return path, inits


def ffn_reference(inits, x, activation="erf"):
    """The float FFN in numpy (float64): the reference the int8 graph is held to."""
    from scipy.special import erf

    h = x.astype(np.float64) @ inits["w_in"] + inits["b_in"]
    if activation == "erf":
        g = h * 0.5 * (1 + erf(h / np.sqrt(2.0)))
    elif activation == "tanh-gelu":
        g = h * 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    else:
        g = np.tanh(h)
    return g @ inits["w_out"] + inits["b_out"]


def rows_of_every_scale(rng):
    x = rng.normal(0, 1, (3, 5, K)).astype(np.float32)
    x[0] *= 1e-3  # a per-tensor scale would flatten these rows to a few steps
    x[2, 1] *= 300.0  # one outlier token
    return x


def relative_error(ours, exact):
    return np.linalg.norm(ours - exact, axis=-1) / np.linalg.norm(exact, axis=-1)


def test_every_matmul_quantized_per_token_and_the_gelu_input_shifted(tmp_path):
    rng = np.random.default_rng(0)
    plain, inits = ffn_graph(tmp_path / "plain.onnx", rng)
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=2)
    assert (counts["quantized_matmuls"], counts["gelu_shifted"], counts["kept_fp32"]) == (2, 1, 0)
    # each bias Add (and the GELU shift's correction) is folded into one Add after the MatMul
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("Add") == 2 + 1 + 1  # biases, Erf's +1, shift
    # each row is scaled by one reciprocal (a Mul per element, not a Div): the only Div is the GELU's
    assert (ops.count("Reciprocal"), ops.count("Div")) == (2, 1)

    x = rows_of_every_scale(rng)
    exact, ours = ffn_reference(inits, x), run(int8, x=x)
    # A wrong shift correction or a per-tensor scale shows up as tens of percent here.
    assert relative_error(ours, exact).max() < 0.03
    # A text's rows do not depend on what else is in the batch.
    for b in range(len(x)):
        np.testing.assert_allclose(run(int8, x=x[b:b + 1]), ours[b:b + 1], rtol=1e-5, atol=1e-6)


def test_kept_layers_stay_float32(tmp_path):
    rng = np.random.default_rng(1)
    plain, _ = ffn_graph(tmp_path / "plain.onnx", rng)
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, matmuls_per_layer=2)  # default: keep first and last
    assert (counts["quantized_matmuls"], counts["gelu_shifted"], counts["kept_fp32"]) == (1, 0, 1)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("MatMul") == 1 and ops.count("MatMulIntegerToFloat") == 1


def test_too_few_weight_matmuls_is_an_export_error(tmp_path):
    plain, _ = ffn_graph(tmp_path / "plain.onnx", np.random.default_rng(2))
    with pytest.raises(ExportError, match=r"quantized 2 weight MatMuls, expected at least 6 for 1 layers"):
        quantize_int8(plain, tmp_path / "int8.onnx", num_layers=1, keep_layers=())


def test_word_embedding_table_is_int8_with_a_scale_per_row(tmp_path):
    rng = np.random.default_rng(3)
    table = rng.normal(0, 0.05, (50, K)).astype(np.float32)
    table[7] *= 40.0  # a row with a large norm must not coarsen the others
    node = helper.make_node("Gather", ["embeddings.word_embeddings.weight", "ids"], ["y"], name="/embeddings/Gather")
    plain = save(tmp_path / "plain.onnx", [node], {"embeddings.word_embeddings.weight": table},
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", K])])
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=0)
    assert counts["int8_embedding_rows"] == 50
    ids = np.array([[0, 7, 49, 3]], dtype=np.int64)
    got = run(int8, ids=ids)[0]
    step = np.abs(table[ids[0]]).max(axis=1, keepdims=True) / 127
    assert (np.abs(got - table[ids[0]]) <= step / 2 + 1e-7).all()
    assert int8.stat().st_size < plain.stat().st_size / 3


def test_layer_norm_outlier_channels_are_smoothed_into_the_weights(tmp_path):
    """One LayerNorm channel 30x the others (as BERT's are): dividing it out per channel before the
    per-token scale, and into W's rows, must cut the error, and stay exact in float."""
    rng = np.random.default_rng(4)
    gamma = np.ones(K, np.float32)
    gamma[5] = 30.0
    inits = {"gamma": gamma, "beta": np.zeros(K, np.float32), "w": rng.normal(0, 0.2, (K, N)).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, name="/ln"),
             helper.make_node("MatMul", ["ln", "w"], ["y"], name=f"{SCOPE}/attention/self/query/MatMul")]
    plain = save(tmp_path / "plain.onnx", nodes, inits,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])])
    x = rng.normal(0, 1, (4, 6, K)).astype(np.float32)
    layer_norm = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma
    exact = layer_norm.astype(np.float64) @ inits["w"]  # numpy reference
    ranges = {"ln": np.abs(layer_norm).reshape(-1, K).max(axis=0)}

    errors = {}
    for name, given in (("plain", None), ("smoothed", ranges)):
        out = tmp_path / f"int8-{name}.onnx"
        counts = quantize_int8(out_file=out, plain_file=plain, num_layers=1, ranges=given, keep_layers=(),
                               matmuls_per_layer=1)
        assert counts["smoothed_inputs"] == (name == "smoothed")
        errors[name] = relative_error(run(out, x=x), exact).mean()
    # measured 0.020 -> 0.013; what is left is mostly the 7-bit weights' own rounding
    assert errors["smoothed"] < 0.75 * errors["plain"], errors


def test_eight_bit_weights_are_closer_and_other_widths_refused(tmp_path):
    rng = np.random.default_rng(5)
    plain, inits = ffn_graph(tmp_path / "plain.onnx", rng)
    x = rows_of_every_scale(rng)
    exact = ffn_reference(inits, x)
    errors = {}
    for bits in (7, 8):
        out = tmp_path / f"int8-w{bits}.onnx"
        counts = quantize_int8(plain, out, num_layers=1, keep_layers=(), matmuls_per_layer=2, weight_bits=bits)
        assert counts["weight_bits"] == bits
        w = next(numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer if i.name.endswith("mm0/w"))
        assert np.abs(w.astype(int)).max() == 2 ** (bits - 1) - 1  # the full signed range of that width
        errors[bits] = relative_error(run_as_bgeort(out, x=x), exact).mean()
    assert errors[8] < errors[7], errors
    with pytest.raises(ExportError, match="weight bits must be 7 or 8"):
        quantize_int8(plain, tmp_path / "bad.onnx", num_layers=1, matmuls_per_layer=2, weight_bits=4)


def attention_inputs_graph(path, rng, *, biases=True):
    """Q, K and V projections of one LayerNorm-free input, as optimum names them, each with its bias
    Add, and y = q * k + v to read them all."""
    inits = {f"w_{n}": rng.normal(0, 0.2, (K, K)).astype(np.float32) for n in "qkv"}
    nodes = []
    for n, scope in zip("qkv", ("query", "key", "value")):
        out = f"{n}0" if biases else n
        nodes.append(helper.make_node("MatMul", ["x", f"w_{n}"], [out], name=f"{SCOPE}/attention/self/{scope}/MatMul"))
        if biases:
            inits[f"b_{n}"] = rng.normal(0, 0.5, K).astype(np.float32)
            nodes.append(helper.make_node("Add", [f"b_{n}", out], [n], name=f"{SCOPE}/attention/self/{scope}/Add"))
    nodes += [helper.make_node("Mul", ["q", "k"], ["qk"], name="/qk"), helper.make_node("Add", ["qk", "v"], ["y"], name="/y")]
    save(path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
         [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", K])])
    return path, inits


@pytest.mark.parametrize("biases", [True, False])
def test_matmuls_reading_one_input_become_one_integer_matmul(tmp_path, biases):
    rng = np.random.default_rng(6)
    plain, inits = attention_inputs_graph(tmp_path / "plain.onnx", rng, biases=biases)
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=3)
    assert (counts["quantized_matmuls"], counts["MatMulIntegerToFloat"]) == (3, 1)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("Split") == 1
    assert ops.count("Add") == 1 + biases  # the y = qk + v Add, and the three biases as one

    x = rows_of_every_scale(rng).astype(np.float64)
    q, k, v = (x @ inits[f"w_{n}"] + (inits[f"b_{n}"] if biases else 0) for n in "qkv")
    exact = q * k + v
    ours = run(int8, x=x.astype(np.float32))
    assert relative_error(ours, exact).max() < 0.05
    for b in range(len(x)):  # still one scale per token
        np.testing.assert_allclose(run(int8, x=x[b:b + 1].astype(np.float32)), ours[b:b + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation, shifted", [("erf", 1), ("tanh-gelu", 1), ("tanh", 0)])
def test_only_gelu_outputs_are_shifted(tmp_path, activation, shifted):
    """A GELU output is >= -0.1701 and quantized on [0, max] after the shift; a plain tanh's (down to
    -1) must stay on the symmetric grid, or its negative values would be clipped."""
    rng = np.random.default_rng(7)
    plain, inits = ffn_graph(tmp_path / "plain.onnx", rng, activation)
    int8 = tmp_path / "int8.onnx"
    assert quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=2)["gelu_shifted"] == shifted
    x = rows_of_every_scale(rng)
    # (median over rows: tanh saturates on the outlier token, where 7-bit weights alone err ~0.17;
    # a tanh clipped at -0.17 by a wrong shift errs by tens of percent on every row)
    assert np.median(relative_error(run(int8, x=x), ffn_reference(inits, x, activation))) < 0.03


def test_a_matmul_output_read_elsewhere_keeps_its_own_bias_add(tmp_path):
    """h0 (before its bias) is also a graph output: it must still be produced, and y still right."""
    rng = np.random.default_rng(8)
    plain, inits = ffn_graph(tmp_path / "plain.onnx", rng, hidden_is_output=True)
    int8 = tmp_path / "int8.onnx"
    quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=2)
    x = rows_of_every_scale(rng)
    y, h0 = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(["y", "h0"], {"x": x})
    assert relative_error(y, ffn_reference(inits, x)).max() < 0.03
    assert relative_error(h0, x.astype(np.float64) @ inits["w_in"]).max() < 0.03


def test_a_group_member_without_a_bias_leaves_every_bias_add_in_place(tmp_path):
    rng = np.random.default_rng(9)
    plain, inits = attention_inputs_graph(tmp_path / "plain.onnx", rng)
    model = onnx.load(str(plain))
    add_v = next(n for n in model.graph.node if n.name.endswith("value/Add"))
    model.graph.node.remove(add_v)  # V without its bias: "v0" is renamed "v"
    next(n for n in model.graph.node if n.output[0] == "v0").output[0] = "v"
    onnx.save(model, str(plain))
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=3)
    assert counts["MatMulIntegerToFloat"] == 1
    assert [n.op_type for n in onnx.load(str(int8)).graph.node].count("Add") == 2 + 1  # Q and K biases, qk + v
    x = rows_of_every_scale(rng).astype(np.float64)
    q, k = (x @ inits[f"w_{n}"] + inits[f"b_{n}"] for n in "qk")
    exact = q * k + x @ inits["w_v"]
    assert relative_error(run(int8, x=x.astype(np.float32)), exact).max() < 0.05


def test_static_activations_use_one_calibrated_scale_and_no_run_time_scaling(tmp_path):
    """Static: QuantizeLinear with a constant step, no per-row Abs/ReduceMax/Div/Mul; close to the
    float reference inside the calibrated range, saturating past it."""
    rng = np.random.default_rng(10)
    plain, inits = ffn_graph(tmp_path / "plain.onnx", rng)
    calibration = rng.normal(0, 1, (4, 8, K)).astype(np.float32)
    h = calibration.astype(np.float64) @ inits["w_in"] + inits["b_in"]
    from scipy.special import erf

    gelu = h * 0.5 * (1 + erf(h / np.sqrt(2.0)))
    ranges = {"x": np.abs(calibration).reshape(-1, K).max(0), "g": np.abs(gelu).reshape(-1, F).max(0)}
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=2, ranges=ranges,
                           activations="static")
    assert counts["activations"].startswith("uint8 per tensor")
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert not {"Abs", "ReduceMax"} & set(ops) and ops.count("QuantizeLinear") == 2
    assert (ops.count("Div"), ops.count("Mul")) == (1, 2)  # the GELU's own: no scaling at run time
    # each bias is the integer MatMul's own last input: the only Add left is the GELU's (1 + erf)
    assert ops.count("Add") == 1
    assert all(len(n.input) == 7 for n in onnx.load(str(int8)).graph.node if n.op_type == "MatMulIntegerToFloat")
    x = rng.normal(0, 1, (3, 5, K)).astype(np.float32)
    x = np.clip(x, -np.abs(calibration).max(), np.abs(calibration).max())  # inside the calibrated range
    assert relative_error(run(int8, x=x), ffn_reference(inits, x)).max() < 0.05
    np.testing.assert_allclose(run(int8, x=x[1:2]), run(int8, x=x)[1:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ExportError, match="calibrated range of g"):
        quantize_int8(plain, tmp_path / "bad.onnx", num_layers=1, keep_layers=(), matmuls_per_layer=2,
                      ranges={"x": ranges["x"]}, activations="static")
    with pytest.raises(ExportError, match="int8 activations must be one of"):
        quantize_int8(plain, tmp_path / "bad.onnx", num_layers=1, matmuls_per_layer=2, activations="tensor")


def test_layernorm_static_activations_are_static_only_where_a_layernorm_feeds_the_matmul(tmp_path):
    """'layernorm-static': a LayerNorm output (a stable range) gets one calibrated scale; any other
    input keeps its scale per token, computed at run time."""
    rng = np.random.default_rng(11)
    inits = {"gamma": rng.uniform(0.5, 2, K).astype(np.float32), "beta": rng.normal(0, 0.1, K).astype(np.float32),
             "w1": rng.normal(0, 0.2, (K, F)).astype(np.float32), "w2": rng.normal(0, 0.2, (F, N)).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1, name="/ln"),
             helper.make_node("MatMul", ["ln", "w1"], ["a"], name=f"{SCOPE}/attention/self/query/MatMul"),
             helper.make_node("Tanh", ["a"], ["t"], name="/tanh"),
             helper.make_node("MatMul", ["t", "w2"], ["y"], name=f"{SCOPE}/output/dense/MatMul")]
    plain = save(tmp_path / "plain.onnx", nodes, inits,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])])

    def reference(x):
        x = x.astype(np.float64)
        ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * inits["gamma"] + inits["beta"]
        return ln, np.tanh(ln @ inits["w1"]) @ inits["w2"]

    calibration = rng.normal(0, 1, (4, 8, K)).astype(np.float32)
    ranges = {"ln": np.abs(reference(calibration)[0]).reshape(-1, K).max(0)}
    int8 = tmp_path / "int8.onnx"
    counts = quantize_int8(plain, int8, num_layers=1, keep_layers=(), matmuls_per_layer=2, ranges=ranges,
                           activations="layernorm-static")
    assert "LayerNorm outputs" in counts["activations"]
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("ReduceMax") == 1 and ops.count("Reciprocal") == 1
    x = rows_of_every_scale(rng)[:, :, :K]
    x[2, 1] /= 300.0  # LayerNorm takes any row's scale out; keep the rows inside the calibrated range
    ours = run(int8, x=x)
    assert relative_error(ours, reference(x)[1]).max() < 0.05
    np.testing.assert_allclose(run(int8, x=x[1:2]), ours[1:2], rtol=1e-5, atol=1e-6)
