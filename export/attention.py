"""Attention in memory linear in the sequence length, for the batches that need no mask.

The exported graph computes each layer's attention as MatMul(Q, K^T), scale, Add(mask), Softmax,
MatMul(., V): one [batch, heads, S, S] float tensor of scores and one of probabilities per layer,
4 GiB each at bge-m3's 16 heads and 8,192 tokens. onnxruntime's CPU kernel of com.microsoft
MultiHeadAttention runs a flash attention (blocks of keys, a running softmax) that never holds the
S x S scores, but only when it gets no mask (bench/m3_attention.py: one layer at 8,192 tokens, plain
4.37 GiB, masked MultiHeadAttention 4.47, mask-free 0.31; bench/README.md, "bge-m3's long texts").

A batch without padding needs no mask, and on CPU every long text runs in a batch of its own (the
token budget, bgeort/batching.py). So each layer's attention becomes an If on "no row is padded":
then MultiHeadAttention(Q, K, V) without a mask, else the exported nodes as they were, moved into the
else branch unchanged. One graph, one session, the weights once; the If reads no weights itself. The
rewrite works on the projections' outputs, so it applies to the fp32 graph and the int8 one alike.
The additive mask those else branches read is built as [batch, 1, S, S] by the exporter (with its
int64 and bool steps, ~1 GiB at 8,192 tokens): the nodes that only it needs go into an If of their
own, run for padded batches only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .simplify import constant_tensors, readers
from .source import ExportError

PREFIX = "bgeort_attention/"
# The condition, computed once per run: the smallest attention_mask value is 1 (no padding).
UNPADDED = PREFIX + "unpadded"


def add_mask_free_path(graph_file: Path, *, num_heads: int, expected_layers: int, required: bool = True) -> int:
    """Rewrite the graph at `graph_file` in place (see the module docstring); returns the layers
    rewritten. With fewer than `expected_layers` the file is left as it was (0 returned), or with
    `required` that is an ExportError: the long-input memory bound would hold for some layers only."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from . import graphfile

    graph_file = Path(graph_file)
    model = onnx.load(str(graph_file), load_external_data=False)
    rewritten = rewrite(model, num_heads=num_heads)
    if rewritten != expected_layers:
        if not required:
            return 0
        raise ExportError(f"{graph_file.name}: the mask-free attention path was built for {rewritten} of "
                          f"{expected_layers} layers; the exported attention pattern is not one export/attention.py "
                          "knows")
    load_external_data_for_model(model, str(graph_file.parent))
    graphfile.save_graph(model, graph_file)
    return rewritten


def rewrite(model, *, num_heads: int) -> int:
    """The rewrite on an onnx ModelProto, in place; returns how many attentions it rewrote."""
    from onnx import TensorProto, helper

    graph = model.graph
    if not any(i.name == "attention_mask" for i in graph.input):
        return 0
    producer = {out: node for node in graph.node for out in node.output}
    consumers = readers(graph)
    outputs = {out.name for out in graph.output}
    constants = _constants(graph)

    matches = []
    for node in graph.node:
        if node.op_type == "Softmax":
            found = _match(node, producer, consumers, constants, num_heads)
            if found is not None and _closed(found["nodes"], found["output"], consumers, outputs):
                matches.append(found)
    if not matches:
        return 0

    position = {id(node): index for index, node in enumerate(graph.node)}
    moved = {id(node) for found in matches for node in found["nodes"]}
    replacement = {}
    for number, found in enumerate(matches):
        tag = f"{PREFIX}layer{number}"
        out = found["output"]
        last = max(found["nodes"], key=lambda node: position[id(node)])
        flash = helper.make_node("MultiHeadAttention", [found["q"], found["k"], found["v"]], [tag + "/flash"],
                                 domain="com.microsoft", num_heads=num_heads, scale=found["scale"],
                                 name=tag + "/MultiHeadAttention")
        replacement[id(last)] = _branch(tag, out, flash, found["nodes"], position)
    # The additive mask the plain branches read is [batch, 1, S, S] as the exporter writes it (with its
    # int64 and bool steps, about 1 GiB at 8,192 tokens): what only it needs runs in an If of its own.
    for number, bias in enumerate(dict.fromkeys(found["mask"] for found in matches)):
        cone = _cone(bias, producer, consumers, moved, outputs)
        if not cone:
            continue
        tag = f"{PREFIX}mask{number}"
        last = max(cone, key=lambda node: position[id(node)])  # the bias's producer: the rest are its ancestors
        unused = helper.make_node("Constant", [], [tag + "/unused"], name=tag + "/Constant",
                                  value=helper.make_tensor(tag + "/zero", TensorProto.FLOAT, [], [0.0]))
        replacement[id(last)] = _branch(tag, bias, unused, cone, position)
        moved |= {id(node) for node in cone}
    condition = [
        helper.make_node("ReduceMin", ["attention_mask"], [PREFIX + "min"], keepdims=0, name=PREFIX + "ReduceMin"),
        helper.make_node("Cast", [PREFIX + "min"], [UNPADDED], to=TensorProto.BOOL, name=PREFIX + "Cast"),
    ]
    kept = []
    for node in graph.node:
        if id(node) in replacement:
            kept.append(replacement[id(node)])
        elif id(node) not in moved:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(condition + kept)
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(matches)


def _branch(tag: str, output: str, unpadded_node, plain_nodes, position: dict):
    """If(no row padded) -> `output`: then `unpadded_node` (one node, one float output), else
    `plain_nodes` in their graph order, the one that made `output` renamed at it."""
    from onnx import TensorProto, helper

    plain_nodes = sorted(plain_nodes, key=lambda node: position[id(node)])
    for node in plain_nodes:
        node.output[:] = [tag + "/plain" if name == output else name for name in node.output]
    then_graph = helper.make_graph([unpadded_node], tag + "/unpadded", [],
                                   [helper.make_tensor_value_info(unpadded_node.output[0], TensorProto.FLOAT, None)])
    else_graph = helper.make_graph(plain_nodes, tag + "/padded", [],
                                   [helper.make_tensor_value_info(tag + "/plain", TensorProto.FLOAT, None)])
    return helper.make_node("If", [UNPADDED], [output], then_branch=then_graph, else_branch=else_graph,
                            name=tag + "/If")


def _cone(name: str, producer: dict, consumers: dict, inside: set, graph_outputs: set) -> list:
    """The nodes that compute `name` and nothing else: its producer (read only by nodes in `inside`,
    the ids of the nodes moved into branches), then each node whose every output is read only by nodes
    of the cone or `inside`. A node is checked each time one of its readers joins, so the last one
    to join settles it."""
    start = producer.get(name)
    if start is None or any(out in graph_outputs for out in start.output):
        return []
    if not all(id(reader) in inside for out in start.output for reader in consumers.get(out, [])):
        return []
    cone = {id(start): start}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for source in node.input:
            candidate = producer.get(source)
            if candidate is None or id(candidate) in cone:
                continue
            readers = [reader for out in candidate.output for reader in consumers.get(out, [])]
            if any(out in graph_outputs for out in candidate.output):
                continue
            if all(id(reader) in cone or id(reader) in inside for reader in readers):
                cone[id(candidate)] = candidate
                frontier.append(candidate)
    return list(cone.values())


def _constants(graph) -> dict[str, np.ndarray]:
    """Small constant tensors by name (scalars and shapes held in the graph, not in its data file)."""
    from onnx import numpy_helper

    return {name: numpy_helper.to_array(tensor) for name, tensor in constant_tensors(graph).items()
            if tensor.data_location != 1 and np.prod(tensor.dims) <= 16}


def _scalar(name: str, constants: dict) -> float | None:
    value = constants.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _scaling(node, constants: dict):
    """(the other input, the factor) when `node` multiplies or divides by a constant scalar, else None."""
    if node.op_type not in ("Mul", "Div"):
        return None
    known = [(i, f) for i, f in ((i, _scalar(x, constants)) for i, x in enumerate(node.input)) if f is not None]
    if len(known) != 1 or (node.op_type == "Div" and known[0][0] != 1):
        return None
    index, factor = known[0]
    return node.input[1 - index], (factor if node.op_type == "Mul" else 1.0 / factor)


def _perm(node) -> list | None:
    """A 4-d Transpose's permutation (None for any other)."""
    order = next((a.ints for a in node.attribute if a.name == "perm"), None)
    return list(order) if node.op_type == "Transpose" and order is not None and len(order) == 4 else None


def _trace_heads(name: str, producer: dict, constants: dict, num_heads: int):
    """Walk back from a [batch, heads, ., .] operand of an attention MatMul through scalar Mul/Div,
    Transpose and the Reshape that split the heads. Returns (the [batch, S, hidden] tensor, the
    composed permutation from [batch, S, heads, head_size], the scalar factor, the nodes) or None."""
    nodes, scale, perm = [], 1.0, [0, 1, 2, 3]
    while True:
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type in ("Mul", "Div"):
            scaled = _scaling(node, constants)
            if scaled is None:
                return None
            name, factor = scaled
            scale *= factor
        elif node.op_type == "Transpose":
            order = _perm(node)
            if order is None:
                return None
            perm = [order[p] for p in perm]
            name = node.input[0]
        elif node.op_type == "Reshape":
            shape = constants.get(node.input[1])
            if shape is not None and (shape.size != 4 or int(shape[2]) not in (num_heads, -1)):
                return None
            nodes.append(node)
            return node.input[0], perm, scale, nodes
        else:
            return None
        nodes.append(node)


def _match(softmax, producer, consumers, constants, num_heads):
    """The attention around `softmax`, or None when it is not the exported pattern."""
    axis = [a.i for a in softmax.attribute if a.name == "axis"]
    if axis and axis[0] not in (-1, 3):
        return None
    add = producer.get(softmax.input[0])
    if add is None or add.op_type != "Add":
        return None
    nodes, post = [softmax, add], 1.0
    scores = None
    for index, name in enumerate(add.input):  # the scores side is the one a MatMul (maybe scaled) makes
        node, chain, factor = producer.get(name), [], 1.0
        while node is not None and len(chain) < 2 and (scaled := _scaling(node, constants)) is not None:
            chain.append(node)
            factor *= scaled[1]
            node = producer.get(scaled[0])
        if node is not None and node.op_type == "MatMul":
            scores, mask, post = node, add.input[1 - index], factor
            nodes += chain
            break
    if scores is None:
        return None
    nodes.append(scores)
    q = _trace_heads(scores.input[0], producer, constants, num_heads)
    k = _trace_heads(scores.input[1], producer, constants, num_heads)
    if q is None or k is None or q[1] != [0, 2, 1, 3] or k[1] != [0, 2, 3, 1]:
        return None
    readers = consumers.get(softmax.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[0] != softmax.output[0]:
        return None
    context = readers[0]
    v = _trace_heads(context.input[1], producer, constants, num_heads)
    if v is None or v[1] != [0, 2, 1, 3] or v[2] != 1.0:
        return None
    nodes += [context] + q[3] + k[3] + v[3]
    name, perm = context.output[0], [0, 1, 2, 3]
    while True:  # back to [batch, S, hidden]: Transpose(0, 2, 1, 3), then a Reshape
        readers = consumers.get(name, [])
        if len(readers) != 1:
            return None
        node = readers[0]
        nodes.append(node)
        if node.op_type == "Transpose":
            order = _perm(node)
            if order is None:
                return None
            perm = [perm[p] for p in order]
            name = node.output[0]
        elif node.op_type == "Reshape" and perm == [0, 2, 1, 3]:
            output = node.output[0]
            break
        else:
            return None
    unique = list({id(node): node for node in nodes}.values())
    return {"nodes": unique, "output": output, "q": q[0], "k": k[0], "v": v[0], "scale": q[2] * k[2] * post,
            "mask": mask}


def _closed(nodes, output: str, consumers: dict, graph_outputs: set) -> bool:
    """True when nothing outside `nodes` reads what they make, but `output`: they can move into a branch."""
    inside = {id(node) for node in nodes}
    for node in nodes:
        for name in node.output:
            if name == output:
                continue
            if name in graph_outputs or any(id(reader) not in inside for reader in consumers.get(name, [])):
                return False
    return True
