"""The int8 graph: weights quantized once per output channel, activations once per token.

Per weight MatMul `x @ W` (W a constant [K, N]):

    s_w[n]  = max|W[:, n]| / 63                   (signed 7-bit per output channel)
    a[t]    = max|x[t, :]|                        (per token row; Abs + ReduceMax)
    q       = QuantizeLinear(x * (1/a), 1/127, 128)  (uint8, zero point 128; |x/a| <= 1)
    y       = MatMulIntegerToFloat(q, W_q, 1, s_w / 127, 128) * a

Why each choice, with its measurements (batch independence, the shared Q/K/V quantization,
the GELU shift, SmoothQuant, 7-bit weights, the static and layernorm-static modes): docs/design.md,
"The int8 graph".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import graphfile
from .simplify import constant_tensors, load_folded, prune, readers
from .source import ExportError

WEIGHT_BITS = 7
PREFIX = "bgeort_int8/"
# The FFN down-projection of these layers (0 = first, -1 = last) stays float32: its input is a GELU
# output whose outliers are the hardest rows to quantize; measured on STS-B with per-token scales,
# mean cosine to fp32 0.99612 with the two kept against 0.99571 without, for ~3% of the time.
KEEP_FFN_OUTPUT_LAYERS = (0, -1)
# min over x of x * Phi(x) is -0.169971 (at x = -0.75), of the tanh form -0.170041: with this shift a
# GELU output is > 5e-5 > 0, so a shifted row's max never needs a floor
GELU_FLOOR = 0.1701
SMOOTHING_ALPHA = 0.5
ACTIVATIONS = ("token", "static", "layernorm-static")
GRAPH_OUTPUT = object()  # the key of the graph's outputs among a tensor's consumers


def quantize_int8(plain_file: Path, out_file: Path, *, num_layers: int, ranges: dict | None = None,
                  weight_bits: int = WEIGHT_BITS, keep_layers: tuple[int, ...] = KEEP_FFN_OUTPUT_LAYERS,
                  matmuls_per_layer: int = 6, activations: str = "token") -> dict:
    """Write the int8 graph of `plain_file` (optimum's unfused fp32 graph) to `out_file`.

    `ranges` (from `activation_ranges`) maps a MatMul input to its per-channel max |x|; the
    LayerNorm outputs among them are smoothed. Without it nothing is smoothed (still correct, less
    accurate). `activations` is "token" (a scale per token, computed at run time), "static" (one
    scale per tensor, from `ranges`, which must then hold every quantized input) or
    "layernorm-static" (static where `ranges` holds a LayerNorm output, per token elsewhere).
    `weight_bits` is 7 (exact with the fast kernels on every x86 CPU) or 8 (closer to fp32; x86
    CPUs without VNNI then need onnxruntime's slower exact kernels, which bgeort asks for).

    Returns what was quantized; fewer weight MatMuls than a BERT layer has (Q, K, V, attention
    output, FFN in, FFN out: 6 per layer, less the kept ones) is an ExportError, because then the
    graph is not the one this recipe was measured on.
    """
    from onnx import helper

    check_options(weight_bits, activations)
    model, folded = load_folded(Path(plain_file))
    graph = model.graph
    opset = next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
    initializers = {init.name: init for init in graph.initializer}
    keep = set(ffn_output_matmuls(graph, layers={k % num_layers for k in keep_layers}))
    gelu_outputs = _gelu_outputs(graph)
    build = _Builder(graph, opset, weight_bits)
    produced_by_layer_norm = set(layer_norm_outputs(graph))
    build.smooth = _smoothing_factors(graph, initializers, {x: r for x, r in (ranges or {}).items()
                                                            if x in produced_by_layer_norm}, keep)
    if activations == "static":
        build.static = ranges or {}
    elif activations == "layernorm-static":  # static for LayerNorm outputs only, per token for the rest
        build.static = {x: r for x, r in (ranges or {}).items() if x in produced_by_layer_norm}
        build.static_everywhere = False

    def quantizable(node) -> bool:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        return weight is not None and len(weight.dims) == 2 and min(weight.dims) >= 16 and node.name not in keep

    # Weight MatMuls reading the same tensor (Q, K and V) become one integer MatMul, then a Split.
    groups = {}
    for node in graph.node:
        if quantizable(node):
            groups.setdefault(node.input[0], []).append(node)
    consumers = {GRAPH_OUTPUT: {out.name for out in graph.output}, **readers(graph)}

    counts = {"quantized_matmuls": 0, "MatMulIntegerToFloat": 0, "kept_fp32": 0, "gelu_shifted": 0,
              "smoothed_inputs": len(build.smooth), "folded_shape_tensors": folded}
    absorbed = set()  # nodes replaced by what an earlier node emitted
    for node in list(graph.node):
        if id(node) in absorbed:
            continue
        if quantizable(node):
            group = groups[node.input[0]] if opset >= 13 else [node]
            # a smoothed input's floor would be -GELU_FLOOR / s per channel: only GELU outputs
            # are shifted and only LayerNorm outputs smoothed, never both
            shifted = node.input[0] in gelu_outputs and node.input[0] not in build.smooth
            adds = [_bias_add(member, consumers, initializers) for member in group]
            if not all(adds):
                adds = [None] * len(group)
            build.matmul(group, [initializers[m.input[1]] for m in group], adds,
                         shift=GELU_FLOOR if shifted else 0.0)
            absorbed.update(id(x) for x in [*group, *(a[0] for a in adds if a)])
            counts["quantized_matmuls"] += len(group)
            counts["MatMulIntegerToFloat"] += 1
            counts["gelu_shifted"] += shifted * len(group)
        elif node.op_type == "MatMul" and node.name in keep:
            counts["kept_fp32"] += 1
            build.nodes.append(node)
        elif node.op_type == "Gather" and _is_word_embedding(node, initializers):
            build.gather(node, initializers[node.input[0]])
            counts["int8_embedding_rows"] = int(initializers[node.input[0]].dims[0])
        else:
            build.nodes.append(node)

    del graph.node[:]
    graph.node.extend(build.nodes)
    prune(model)  # the float weights the integer ones replaced
    if not any(e.domain == "com.microsoft" for e in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    graphfile.save_graph(model, Path(out_file))

    expected = matmuls_per_layer * num_layers - counts["kept_fp32"]
    if counts["quantized_matmuls"] < expected:
        raise ExportError(f"int8 quantization quantized {counts['quantized_matmuls']} weight MatMuls, "
                          f"expected at least {expected} for {num_layers} layers")
    return {**counts, "weight_bits": weight_bits, "weights": "int8 per output channel",
            "activations": {"token": "uint8 per token", "static": "uint8 per tensor, static (calibrated)",
                            "layernorm-static": "uint8 per tensor (calibrated) for LayerNorm outputs, per token "
                                                "for the rest"}[activations]}


def check_options(weight_bits: int, activations: str) -> None:
    if weight_bits not in (7, 8):
        raise ExportError(f"int8 weight bits must be 7 or 8, got {weight_bits!r}")
    if activations not in ACTIVATIONS:
        raise ExportError(f"int8 activations must be one of {ACTIVATIONS}, got {activations!r}")


class _Builder:
    """Appends the replacement nodes and their constants to one graph."""

    def __init__(self, graph, opset: int, weight_bits: int):
        self.graph, self.opset, self.weight_bits, self.nodes = graph, opset, weight_bits, []
        self.quantized = {}  # (input, shift) -> (uint8 tensor, row scale, zero point, step)
        self.smooth = {}  # input -> per-channel divisor s
        self.static = None  # input -> per-channel max |x| when activations are static
        self.static_everywhere = True  # else only the inputs in self.static are (the rest per token)
        self.matmuls = 0
        self.one = self.const("one", np.array(1.0, np.float32))
        self.tiny = self.const("tiny", np.array(1e-12, np.float32))
        self.axes = self.const("last_axis", np.array([-1], np.int64))

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(value, PREFIX + name))
        return PREFIX + name

    def node(self, op: str, inputs: list, output: str, **attrs) -> str:
        from onnx import helper

        domain = "com.microsoft" if op == "MatMulIntegerToFloat" else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def smoothed(self, x: str, p: str) -> str:
        """x divided per channel by its smoothing factors (those went into the weights' rows), or x."""
        if x not in self.smooth:
            return x
        return self.node("Mul", [x, self.const(p + "smooth", (1 / self.smooth[x]).astype(np.float32))],
                         p + "smoothed")

    def rows(self, x: str, shift: float) -> tuple[str, str, str, float]:
        """x quantized to uint8 with one scale per row (last axis): symmetric around zero point 128,
        or, for a shifted input (x + shift >= 0), on [0, max] with zero point 0."""
        key = (x, shift)
        if key not in self.quantized and self.static is not None and (self.static_everywhere or x in self.static):
            self.quantized[key] = self.fixed_rows(x, shift)
        if key not in self.quantized:
            p = f"{PREFIX}a{len(self.quantized)}/"
            x = self.smoothed(x, p)
            if shift:
                magnitude = self.node("Add", [x, self.const(p + "shift", np.array(shift, np.float32))], p + "shifted")
                step, zero_point = 1.0 / 255, 0
            else:
                magnitude = self.node("Abs", [x], p + "abs")
                step, zero_point = 1.0 / 127, 128
            if self.opset >= 18:
                peak = self.node("ReduceMax", [magnitude, self.axes], p + "max", keepdims=1)
            else:
                peak = self.node("ReduceMax", [magnitude], p + "max", axes=[-1], keepdims=1)
            # a shifted GELU output is > 0 (see GELU_FLOOR), so only |x| needs a floor
            scale = peak if shift else self.node("Max", [peak, self.tiny], p + "scale")
            # times the reciprocal: onnxruntime's Div ran at half the rate of its Mul (3.8 against
            # ~9 G floats/s here); bge-small shape int8, 1 thread, interleaved best-of runs: STS-B
            # sentences +3%, SciFact chunks +1.5%, single query +3%
            inverse = self.node("Reciprocal", [scale], p + "inverse")
            unit = self.node("Mul", [magnitude if shift else x, inverse], p + "unit")
            zp = self.const(p + "zero_point", np.array(zero_point, np.uint8))
            q = self.node("QuantizeLinear", [unit, self.const(p + "step", np.array(step, np.float32)), zp], p + "q")
            self.quantized[key] = (q, scale, zp, step)
        return self.quantized[key]

    def fixed_rows(self, x: str, shift: float) -> tuple[str, None, str, float]:
        """x quantized with one scale for the whole tensor, from its calibrated max |x| (after
        smoothing): symmetric around 128, or for a GELU output on [-shift, max] with the zero point
        at the shift (no correction needed after the MatMul). Values past the calibrated range
        saturate."""
        if x not in self.static:
            raise ExportError(f"static int8 activations need the calibrated range of {x}")
        p = f"{PREFIX}a{len(self.quantized)}/"
        peak = self.static[x] / self.smooth[x] if x in self.smooth else self.static[x]
        peak = max(float(np.max(peak)), 1e-12)
        x = self.smoothed(x, p)
        if shift:
            step = (peak + shift) / 255
            zero_point = int(round(shift / step))
        else:
            step, zero_point = peak / 127, 128
        zp = self.const(p + "zero_point", np.array(zero_point, np.uint8))
        q = self.node("QuantizeLinear", [x, self.const(p + "step", np.array(step, np.float32)), zp], p + "q")
        return q, None, zp, step

    def matmul(self, nodes, weights, adds, *, shift: float) -> None:
        """One integer MatMul for `nodes` (weight MatMuls reading the same input), their weights
        side by side. `adds` holds each one's bias Add (node, bias) to fold in, or is all None."""
        from onnx import numpy_helper

        x = nodes[0].input[0]
        qmax = 2 ** (self.weight_bits - 1) - 1
        w_q, w_scale = [], []
        for weight in weights:
            w = numpy_helper.to_array(weight).astype(np.float32)
            if x in self.smooth:
                w = w * self.smooth[x][:, None]
            scale = np.abs(w).max(axis=0) / qmax
            scale[scale == 0] = 1.0
            w_q.append(np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8))
            w_scale.append(scale)
        w_q, w_scale = np.concatenate(w_q, axis=1), np.concatenate(w_scale)
        q, row_scale, zp, step = self.rows(x, shift)
        p = f"{PREFIX}mm{self.matmuls}/"
        self.matmuls += 1
        outputs = [add.output[0] for add, _ in adds] if adds[0] is not None else [n.output[0] for n in nodes]
        single = len(nodes) == 1
        biased = adds[0] is not None or bool(shift)  # (kept for all-zero biases: same graph as real models)
        last = outputs[0] if single else p + "joined"  # the chain ends in the output, or in a Split to them
        inputs = [q, self.const(p + "w", w_q), self.one,
                  self.const(p + "w_scale", (w_scale * step).astype(np.float32)), zp]
        offset = None
        if biased:
            # the bias, less the GELU shift's share: (x + c) @ W = x @ W + c * colsum(W)
            offset = np.zeros(w_q.shape[1], np.float32)
            if shift and row_scale is not None:  # (a static zero point absorbs the shift itself)
                offset -= shift * (w_q.astype(np.float32) * w_scale).sum(axis=0)
            if adds[0] is not None:
                offset += np.concatenate([bias for _, bias in adds])
        if row_scale is None:
            # static scales: the bias is the integer MatMul's own last input, added as each tile is
            # scaled (no Add over the output; before a GELU, onnxruntime's plain Gelu instead of BiasGelu)
            if offset is not None:
                inputs += ["", self.const(p + "offset", offset)]
            y = self.node("MatMulIntegerToFloat", inputs, last)
        else:
            y = self.node("MatMulIntegerToFloat", inputs, p + "y")
            y = self.node("Mul", [y, row_scale], p + "scaled" if biased else last)
            if offset is not None:
                y = self.node("Add", [y, self.const(p + "offset", offset)], last)
        if not single:
            from onnx import helper

            sizes = self.const(p + "sizes", np.array([int(w.dims[1]) for w in weights], np.int64))
            self.nodes.append(helper.make_node("Split", [y, sizes], outputs, name=p + "split", axis=-1))

    def gather(self, node, table) -> None:
        """Gather from an int8 table with one scale per row: rows * scales[ids]."""
        from onnx import TensorProto, numpy_helper

        rows = np.asarray(numpy_helper.to_array(table), dtype=np.float32)
        scale = np.abs(rows).max(axis=1, keepdims=True) / 127
        scale[scale == 0] = 1.0
        p = PREFIX + "embedding/"
        ids = node.input[1]
        # in place: XLM-R's table is 250,002 x 768 floats (768 MB), each temporary another such copy
        unit = np.divide(rows, scale)
        del rows
        np.clip(np.round(unit, out=unit), -127, 127, out=unit)
        q = self.node("Gather", [self.const(p + "rows", unit.astype(np.int8)), ids], p + "q", axis=0)
        del unit
        s = self.node("Gather", [self.const(p + "scale", scale.astype(np.float32)), ids], p + "scale", axis=0)
        f = self.node("Cast", [q], p + "f", to=TensorProto.FLOAT)
        self.node("Mul", [f, s], node.output[0])


def weight_matmul_inputs(graph) -> list[str]:
    """The inputs of every MatMul by a constant weight."""
    initializers = {init.name for init in graph.initializer}
    return sorted({node.input[0] for node in graph.node if node.op_type == "MatMul" and node.input[1] in initializers})


def layer_norm_outputs(graph) -> list[str]:
    """Weight-MatMul inputs that a LayerNormalization node produces (the ones worth smoothing)."""
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}
    return sorted({node.input[0] for node in graph.node
                   if node.op_type == "MatMul" and node.input[1] in initializers
                   and produced_by.get(node.input[0]) == "LayerNormalization"})


def activation_ranges(plain_file: Path, tokenizer_file: Path, texts: list[str], *, max_length: int,
                      every_input: bool = False) -> dict:
    """Per-channel max |x| of every LayerNorm output feeding a weight MatMul (`every_input`: of every
    weight MatMul's input), over the real tokens of `texts`, each run alone through the float32 graph."""
    import onnx
    from onnx import TensorProto, helper

    from bgeort.tokenization import TextTokenizer

    model = onnx.load(str(plain_file), load_external_data=False)  # a data file stays where it is
    names = weight_matmul_inputs(model.graph) if every_input else layer_norm_outputs(model.graph)
    if not names:
        return {}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = graphfile.cpu_session(model, Path(plain_file).parent)
    wanted = {i.name for i in session.get_inputs()}
    tokenizer = TextTokenizer(tokenizer_file, max_length=max_length)
    encoded = tokenizer.encode(list(texts))
    ranges = {}
    for i in range(len(texts)):
        feed = {k: v for k, v in tokenizer.pad(encoded, np.array([i])).items() if k in wanted}
        for name, value in zip(names, session.run(names, feed)):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges.get(name, 0.0), peak)
    return ranges


def _smoothing_factors(graph, initializers, ranges: dict, keep: set) -> dict:
    """s_c = max|x_c|^a / max_n|W_cn|^(1-a), over every weight MatMul reading x (Q, K and V share one)."""
    from onnx import numpy_helper

    weight_peak = {}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or node.input[0] not in ranges or node.name in keep:
            continue
        peak = np.abs(numpy_helper.to_array(weight)).max(axis=1)
        weight_peak[node.input[0]] = np.maximum(weight_peak.get(node.input[0], 0.0), peak)
    factors = {}
    for x, w_peak in weight_peak.items():
        x_peak = np.maximum(ranges[x], 1e-5)
        s = x_peak ** SMOOTHING_ALPHA / np.maximum(w_peak, 1e-5) ** (1 - SMOOTHING_ALPHA)
        factors[x] = s.astype(np.float32)
    return factors


def ffn_output_matmuls(graph, *, layers) -> list[str]:
    """Names of the FFN down-projection MatMuls of the given layers (optimum's node naming)."""
    pattern = re.compile(r"layer\.(\d+)/output/dense/MatMul$")
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and (m := pattern.search(node.name)) and int(m.group(1)) in layers]


def _gelu_outputs(graph) -> set[str]:
    """Outputs of each FFN's activation when it is a GELU, by transformers' module naming
    (".../intermediate_act_fn/...") as optimum exports it: the exact form (Erf) or the tanh form
    (Tanh with its 0.044715 coefficient; a plain tanh activation goes below -1 and is not shifted),
    and onnxruntime's fused GELU operators."""
    from onnx import numpy_helper

    values = constant_tensors(graph)

    def has_tanh_coefficient(nodes) -> bool:
        found = (numpy_helper.to_array(values[i]) for n in nodes for i in n.input if i in values)
        return any(v.size == 1 and abs(float(v.reshape(-1)[0]) - 0.044715) < 1e-6 for v in found)

    scopes = {}
    for node in graph.node:
        if "act_fn" in node.name:
            scopes.setdefault(node.name.rsplit("/", 1)[0], []).append(node)
    outputs = {o for n in graph.node if n.op_type in ("Gelu", "BiasGelu", "FastGelu") for o in n.output}
    for nodes in scopes.values():
        kinds = {n.op_type for n in nodes}
        if "Erf" in kinds or ("Tanh" in kinds and has_tanh_coefficient(nodes)):
            produced = {o for n in nodes for o in n.output}
            consumed = {i for n in nodes for i in n.input}
            outputs |= produced - consumed  # the scope's final output
    return outputs


def _bias_add(node, consumers, initializers):
    """(the Add, its bias) when `node`'s output goes only to an Add of a 1-D constant as wide as it."""
    from onnx import numpy_helper

    readers = consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in consumers.get(GRAPH_OUTPUT, ()):
        return None
    (other,) = [name for name in readers[0].input if name != node.output[0]] or [None]
    bias = initializers.get(other)
    width = initializers[node.input[1]].dims[1]
    if bias is None or list(bias.dims) != [width]:
        return None
    return readers[0], numpy_helper.to_array(bias).astype(np.float32)


def _is_word_embedding(node, initializers) -> bool:
    table = initializers.get(node.input[0])
    return table is not None and len(table.dims) == 2 and "word_embeddings" in table.name
