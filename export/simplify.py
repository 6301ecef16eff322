"""Fold an exported graph's shape arithmetic into constants.

optimum's BERT graph recomputes, in every layer, the target shapes of its Reshapes and the attention
scale from `Shape` of the running tensors: about 20 tiny nodes a layer (Shape, Gather, Unsqueeze,
Concat, Slice, Cast, Sqrt, Div) that onnxruntime cannot fold, because the batch and sequence
dimensions are unknown until run time. Each costs a kernel launch: all-MiniLM-L6-v2-shaped and
bge-small-shaped int8 graphs ran 891 -> 699 nodes per call, single short query p50 -9% (1 thread).

How: every tensor computed only from constants and `Shape` outputs is evaluated with onnxruntime for
four input shapes (batch, sequence) = (2, 5), (3, 7), (1, 11), (4, 37), inputs all ones, and the last
also all zeros. A value equal in every run is a constant. A Reshape target that changes with them is
rewritten with Reshape's own conventions when that gives the same shape in every run: 0 for "this
input dimension" and -1 for "the rest" ([batch, -1, 12, 32] becomes [0, -1, 12, 32]), when only such
Reshapes read it. Anything else is left as
it is. Only `Shape` outputs are followed, and a value that changes with the inputs' contents fails the
equality (a `Shape` of NonZero's output, say); control flow, whose branches may read any tensor, is
not folded at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .graphfile import cpu_session

# (batch, sequence) shapes the graph is evaluated at, inputs all ones; the last one also with all zeros.
PROBE_SHAPES = ((2, 5), (3, 7), (1, 11), (4, 37))
CONTENTS = (1, 0)
# Operators whose output size depends on their inputs' values, and the inputs that set an output's
# size for the others: a Shape is folded only when every tensor upstream has its size fixed by the
# input shapes.
DATA_SIZED = {"NonZero", "Compress", "Unique", "TopK", "NonMaxSuppression", "StringSplit", "If", "Loop", "Scan"}
SIZE_ARGUMENTS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "Tile": (1,),
                  "Slice": (1, 2, 3, 4), "Pad": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "OneHot": (1,),
                  "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
                  "ReduceSum": (1,), "ReduceMean": (1,), "ReduceProd": (1,), "ReduceL2": (1,),
                  "CenterCropPad": (1,), "Col2Im": (1, 2)}


def fold_shapes(model, *, data_folder: Path | None = None) -> int:
    """Rewrite `model` (an onnx ModelProto whose inputs have at most two free dimensions: batch and
    sequence) in place; returns how many tensors became constants. A model loaded without its
    weights (`load_external_data=False`, as a graph past 2 GiB must be) gives `data_folder`, the
    folder of its data file. Graphs with control flow (If, Loop, Scan) are left as they are."""
    import onnx
    from onnx import AttributeProto, helper, numpy_helper

    graph = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for node in graph.node for a in node.attribute):
        return 0
    initializers = {init.name for init in graph.initializer}
    static = set(initializers)  # values known from the input shapes alone
    sized = {i.name for i in graph.input} | initializers  # tensors whose shape the input shapes fix
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (node.op_type == "Shape" and inputs[0] in sized) or (
                node.op_type != "Shape" and inputs and all(i in static for i in inputs)):
            static.update(node.output)
        if node.domain in ("", "ai.onnx") and node.op_type not in DATA_SIZED and all(
                i in sized for i in inputs) and all(
                inputs[k] in static for k in SIZE_ARGUMENTS.get(node.op_type, ()) if k < len(inputs)):
            sized.update(node.output)
    frontier = []  # static tensors that a run-time node reads
    for node in graph.node:
        if all(out in static for out in node.output):
            continue
        frontier += [i for i in node.input if i in static and i not in initializers and i not in frontier]
    if not frontier:
        return 0
    reading = readers(graph)
    # A target read only by Reshapes that copy on 0 (allowzero unset) may use 0 and -1 ...
    reshaped = {}  # ... target -> the tensors it reshapes
    for name in frontier:
        nodes = reading.get(name, [])
        if nodes and all(n.op_type == "Reshape" and n.input[1] == name and n.input[0] != name
                         and not any(a.name == "allowzero" and a.i for a in n.attribute) for n in nodes):
            reshaped[name] = [n.input[0] for n in nodes]

    types = _value_types(model)
    wanted = [t for t in dict.fromkeys(frontier + [x for xs in reshaped.values() for x in xs]) if types.get(t)]
    feeds = _probe_feeds(graph)
    if feeds is None:
        return 0
    # The probe is the model itself with the wanted tensors as its outputs for a moment, serialized
    # once, never copied: bge-reranker-base shape (1.1 GB of weights), load_folded's peak RSS 7.8 ->
    # 4.2 GiB.
    outputs = [onnx.ValueInfoProto.FromString(out.SerializeToString()) for out in graph.output]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(t, types[t], None) for t in wanted)
    try:
        probe = model.SerializeToString()
    finally:
        del graph.output[:]
        graph.output.extend(outputs)
    try:
        session = cpu_session(probe, data_folder)
        runs = [dict(zip(wanted, session.run(wanted, feed))) for feed in feeds]
    except Exception:  # onnxruntime's own error types: a graph the probes cannot run is left as it is
        return 0
    finally:
        session = probe = None

    constants = {}
    for name in frontier:
        if name not in wanted:
            continue
        values = [run[name] for run in runs]
        if all(v.shape == values[0].shape and np.array_equal(v, values[0]) for v in values):
            constants[name] = values[0]
        elif name in reshaped and all(x in wanted for x in reshaped[name]):
            target = _reshape_target(values, [[run[x].shape for run in runs] for x in reshaped[name]])
            if target is not None:
                constants[name] = target
    # A node is removed only when every output it has that is still read became a constant.
    still_read = set(reading) | {out.name for out in graph.output}
    for node in graph.node:
        outputs = [out for out in node.output if out]
        if any(out in constants for out in outputs) and any(
                out not in constants and out in still_read for out in outputs):
            for out in outputs:
                constants.pop(out, None)

    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    kept = [node for node in graph.node if not any(out in constants for out in node.output)]
    del graph.node[:]
    graph.node.extend(kept)
    prune(model)
    return len(constants)


def _value_types(model) -> dict:
    """tensor name -> element type, by onnx's shape inference on the graph without its weights (the
    initializers enter as typed inputs), so no copy of the weights is made."""
    import onnx
    from onnx import helper

    graph = model.graph
    weights = [helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)) for init in graph.initializer]
    shell = helper.make_graph(graph.node, graph.name, [*graph.input, *weights], graph.output,
                              value_info=graph.value_info)
    inferred = onnx.shape_inference.infer_shapes(
        helper.make_model(shell, opset_imports=model.opset_import, ir_version=model.ir_version))
    return {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}


def load_folded(graph_file: Path):
    """(the graph in `graph_file` with its shapes folded and its weights loaded, tensors folded). A
    data file's weights come in only after the folding: fold_shapes serializes the graph for
    onnxruntime, which a graph past 2 GiB cannot be with its weights in it."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(graph_file), load_external_data=False)
    folded = fold_shapes(model, data_folder=graph_file.parent)
    load_external_data_for_model(model, str(graph_file.parent))
    return model, folded


def _probe_feeds(graph) -> list[dict] | None:
    """One feed per PROBE_SHAPES entry and content: each input's first two free dimensions (by name)
    set to (batch, sequence), its fixed ones kept; None when an input has a third free dimension or
    an unnamed one. The contents vary so that a value read from the inputs' contents is not taken
    for a shape's."""
    from onnx import helper

    shapes = [(sizes, fill) for sizes in PROBE_SHAPES for fill in CONTENTS[:1]]
    shapes.append((PROBE_SHAPES[-1], CONTENTS[1]))
    feeds = [{} for _ in shapes]
    symbols = []
    for graph_input in graph.input:
        tensor = graph_input.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        for feed, (sizes, fill) in zip(feeds, shapes):
            shape = []
            for dim in tensor.shape.dim:
                if dim.HasField("dim_value"):
                    shape.append(dim.dim_value)
                    continue
                if not dim.dim_param:
                    return None
                if dim.dim_param not in symbols:
                    symbols.append(dim.dim_param)
                if len(symbols) > len(sizes):
                    return None
                shape.append(sizes[symbols.index(dim.dim_param)])
            feed[graph_input.name] = np.full(shape, fill, dtype)
    return feeds


def _reshape_target(values: list, data_shapes: list) -> np.ndarray | None:
    """A Reshape target using 0 and -1 that gives `values[r]` for every run r and every reshaped
    tensor (`data_shapes[tensor][r]`), or None."""
    if any(v.ndim != 1 or len(v) != len(values[0]) for v in values):
        return None
    target = []
    for k in range(len(values[0])):
        column = [int(v[k]) for v in values]
        if len(set(column)) == 1:
            target.append(column[0])
        elif all(all(k < len(shape) and shape[k] == c for shape, c in zip(shapes, column)) for shapes in data_shapes):
            target.append(0)
        else:
            target.append(None)
    if target.count(None) == 1 and -1 not in target:
        target[target.index(None)] = -1
    if None in target:
        return None
    for shapes in data_shapes:
        for shape, value in zip(shapes, values):
            if _resolve(shape, target) != _resolve(shape, [int(x) for x in value]):
                return None
    return np.array(target, np.int64)


def _resolve(shape, target) -> list[int]:
    out = [shape[k] if t == 0 else t for k, t in enumerate(target)]
    if -1 in out:
        known = int(np.prod([x for x in out if x != -1]))
        out[out.index(-1)] = int(np.prod(shape)) // known
    return out


def readers(graph) -> dict[str, list]:
    """Tensor name -> the nodes of `graph` that read it (graph outputs not included)."""
    found: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def constant_tensors(graph) -> dict:
    """Tensor name -> TensorProto for the graph's initializers and its Constant nodes' values."""
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def prune(model) -> None:
    """Drop the nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {out.name for out in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
