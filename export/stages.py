"""The export stages, one function each: ONNX graph, fused graph, fp16 graph (int8: export/int8.py).

Each takes a path and writes a path; none knows about the others or about the model folder. A graph
with more than graphfile.SINGLE_FILE_BYTES of weights is written as the graph and one data file beside
it (export/graphfile.py).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

from bgeort.manifest import POOLED_OUTPUT

from . import graphfile
from .source import ExportError

# The ONNX Runtime transformer optimizer is chatty at INFO and warns about things we check ourselves.
logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)


def export_onnx(model_folder: Path, out_file: Path, *, task: str, opset: int | None,
                trust_remote_code: bool = False) -> int:
    """The plain ONNX graph of a transformers folder through optimum's exporter. Returns the opset."""
    import onnx
    from optimum.exporters.onnx import main_export

    # Beside the output, not in /tmp: a large model's weights pass through here (2.2 GB for 568M).
    with tempfile.TemporaryDirectory(prefix=".bgeort-optimum-", dir=Path(out_file).parent) as tmp:
        main_export(str(model_folder), output=tmp, task=task, opset=opset, device="cpu",
                    do_validation=False, library_name="transformers", trust_remote_code=trust_remote_code)
        produced = Path(tmp) / "model.onnx"
        if not produced.is_file():
            raise ExportError(f"optimum did not write model.onnx for {model_folder}")
        # Past 2 GiB optimum keeps the weights in model.onnx_data; either way they are loaded and
        # written again under our names (one file, or out_file and its .data file).
        graphfile.save_graph(onnx.load(str(produced)), Path(out_file))
    model = onnx.load(str(out_file), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def graph_inputs(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path), load_external_data=False).graph.input]


def count_ops(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def fuse(plain_file: Path, out_file: Path, *, num_layers: int, num_heads: int, hidden_size: int,
         embedding_fusion: bool = True) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (attention, SkipLayerNorm, bias-GELU, embedding LayerNorm).

    Some exporter settings make the attention pattern unrecognisable and the optimizer then fuses
    nothing, silently; so every layer's fusions are counted and a shortfall is an error.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # The fusion works on the graph with its weights in a file beside it: with them in memory the
    # optimizer's copies grew the stage to 6x them (docs/design.md, "Export memory").
    with tempfile.TemporaryDirectory(prefix=".bgeort-fuse-", dir=Path(out_file).parent) as tmp:
        aside = graphfile.weights_aside(Path(plain_file), Path(tmp))
        model = onnx.load(str(aside), load_external_data=False)
        with graphfile.working_directory(tmp):  # where onnx looks for an external tensor's file
            optimized = optimize_model(model, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                       optimization_options=options, opt_level=0, use_gpu=False)
        load_external_data_for_model(optimized.model, tmp)
        for tensor in optimized.model.graph.initializer:
            tensor.ClearField("data_location")  # (left set to its default: the same file as before, byte for byte)
        # onnxruntime names the data file as graphfile does (out_file + ".data"); pipeline checks it.
        optimized.save_model_to_file(str(out_file),
                                     use_external_data_format=graphfile.needs_data_file(optimized.model))
    ops = count_ops(out_file)
    expected = {"Attention": num_layers, "SkipLayerNormalization": 2 * num_layers,
                "EmbedLayerNormalization": int(embedding_fusion)}
    gelu = ops.get("BiasGelu", 0) + ops.get("FastGelu", 0) + ops.get("Gelu", 0)
    missing = {op: (ops.get(op, 0), want) for op, want in expected.items() if ops.get(op, 0) != want}
    if gelu != num_layers:
        missing["BiasGelu/FastGelu/Gelu"] = (gelu, num_layers)
    if missing:
        raise ExportError("the ONNX Runtime transformer fusion did not fuse every layer (found, expected): "
                          f"{missing}. The exported graph's attention pattern is not one the optimizer knows")
    return {op: ops[op] for op in sorted(ops) if op in ("Attention", "SkipLayerNormalization",
                                                      "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu")}


def convert_fp16(fused_file: Path, out_file: Path) -> None:
    """fp16 weights and activations, float32 inputs/outputs kept so callers feed the same arrays."""
    from onnxruntime.transformers.onnx_model import OnnxModel
    import onnx

    model = OnnxModel(onnx.load(str(fused_file)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out_file), use_external_data_format=graphfile.needs_data_file(model.model))


def add_pooling(model_file: Path, out_file: Path, *, pooling: str, hidden_output: str = "last_hidden_state") -> None:
    """Append CLS or mean pooling to the graph, in float32, and make the pooled rows its only output.

    For the CUDA path: with pooling inside, only (batch, dim) comes back to the host instead of
    every token's state. Normalization stays in numpy, as on every other path.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_file))
    graph = model.graph
    hidden = next((o for o in graph.output if o.name == hidden_output), None)
    if hidden is None or hidden.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ExportError(f"{model_file.name} has no float32 output {hidden_output!r} to pool")
    prefix = "bgeort_pool/"
    if pooling == "cls":
        graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), prefix + "first"))
        graph.node.append(helper.make_node("Gather", [hidden_output, prefix + "first"], [POOLED_OUTPUT], axis=1,
                                           name=prefix + "cls"))
    elif pooling == "mean":
        graph.initializer.extend([
            numpy_helper.from_array(np.array([1], dtype=np.int64), prefix + "axis1"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), prefix + "axis2"),
            numpy_helper.from_array(np.array(1e-9, dtype=np.float32), prefix + "eps"),
        ])
        graph.node.extend([
            helper.make_node("Cast", ["attention_mask"], [prefix + "mask"], to=TensorProto.FLOAT, name=prefix + "cast"),
            helper.make_node("Unsqueeze", [prefix + "mask", prefix + "axis2"], [prefix + "mask3"], name=prefix + "unsq"),
            helper.make_node("Mul", [hidden_output, prefix + "mask3"], [prefix + "masked"], name=prefix + "mul"),
            helper.make_node("ReduceSum", [prefix + "masked", prefix + "axis1"], [prefix + "sum"], keepdims=0,
                             name=prefix + "sum"),
            helper.make_node("ReduceSum", [prefix + "mask", prefix + "axis1"], [prefix + "count"], keepdims=1,
                             name=prefix + "count"),
            helper.make_node("Max", [prefix + "count", prefix + "eps"], [prefix + "safe"], name=prefix + "max"),
            helper.make_node("Div", [prefix + "sum", prefix + "safe"], [POOLED_OUTPUT], name=prefix + "div"),
        ])
    else:
        raise ExportError(f"cannot put pooling {pooling!r} into the graph")
    dim = hidden.type.tensor_type.shape.dim
    pooled = helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, [dim[0].dim_param or "batch", dim[2].dim_value])
    del graph.output[:]
    graph.output.append(pooled)
    graphfile.save_graph(model, Path(out_file))


def fold_plain(plain_file: Path) -> int:
    """Fold the plain graph's shape arithmetic into constants, in place (export/simplify.py): fewer
    nodes to run and to load (bge-small shape: 1,117 -> 466 before onnxruntime's own optimizer).
    Run after the fused and int8 graphs were made from the graph as exported."""
    from .simplify import load_folded

    model, folded = load_folded(Path(plain_file))
    if folded:
        graphfile.save_graph(model, Path(plain_file))
    return folded


def first_token_only(graph_file: Path, *, first_row_outputs: tuple[str, ...] = ()) -> int:
    """Where only the first token's state is read (a cross-encoder's head, a CLS Gather, the outputs
    in `first_row_outputs`: bgeort pools them by CLS), the last layer computes that row only
    (export/narrow.py), in place. Returns the nodes narrowed."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from .narrow import first_token_only as narrow

    graph_file = Path(graph_file)
    model = onnx.load(str(graph_file), load_external_data=False)
    narrowed = narrow(model, first_row_outputs=first_row_outputs, data_folder=graph_file.parent)
    if narrowed:
        load_external_data_for_model(model, str(graph_file.parent))
        graphfile.save_graph(model, graph_file)
    return narrowed


def vector_ranges(folder: Path, texts: list[str]) -> dict:
    """Per-dimension min and max of the float32 vectors of `texts` (export/calibration.py's): the
    manifest's quantization_ranges, so int8/uint8 stored vectors do not depend on their batch."""
    import bgeort
    from bgeort.quantize import calibration_ranges

    model = bgeort.Embedder(folder, precision="fp32", device="cpu", verify=False)
    return calibration_ranges(model.encode_corpus(texts), corpus=f"export/calibration.py ({len(texts)} texts)")
