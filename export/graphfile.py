"""ONNX graphs on disk: one file, or a graph file and one file of its weights.

A graph with more than SINGLE_FILE_BYTES of weights keeps them outside the graph as ONNX external
data, in one file beside it named after it (`model.onnx` -> `model.onnx.data`), never one file per
tensor. Two reasons: protobuf cannot serialize a message past 2 GiB (bge-reranker-large and
bge-reranker-v2-m3 in fp32: 568M parameters, 2.2 GB), and onnxruntime memory-maps a data file
instead of parsing the weights out of the graph's protobuf, so a session opens faster and holds
less: bge-small shape, one CPU session after a run, single file against data file: fp32 0.39-0.41 s
and +186 MB against 0.18-0.20 s and +109 MB (the word-embedding table stays in the mapped file, only
the rows used are read), fp16 0.27-0.30 s / +188-206 MB against 0.18-0.19 s / +163 MB, int8
0.21-0.22 s / +69 MB against 0.08-0.14 s / +58 MB, runs as fast. Smaller graphs (the tests' tiny
models) stay one file. The stages write through `save_graph`, or, for onnxruntime's own model
objects (fusion, fp16), through its writer asked by `needs_data_file`, which names the file the
same way; `data_file` checks what was written. Loading needs nothing special: `onnx.load` and
onnxruntime read the data file named inside the graph.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from .source import ExportError

# Weights over this many bytes go to a data file (see above; under protobuf's 2 GiB limit in any
# case). Read at each call, so tests move it to put a tiny model through either path.
SINGLE_FILE_BYTES = 16 * 2**20
# Tensors under this stay in the graph (shapes, scales, biases of tiny models): onnx's own default.
INLINE_TENSOR_BYTES = 1024


def data_path(graph_file: Path) -> Path:
    """Where the weights of `graph_file` go when they do not fit in it."""
    return graph_file.with_name(graph_file.name + ".data")


def weight_bytes(model) -> int:
    """Bytes of the graph's initializers, wherever they are held (in memory or in a data file)."""
    from onnx import helper

    return sum(math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
               for tensor in model.graph.initializer)


def save_graph(model, graph_file: Path, *, data_file: bool | None = None) -> None:
    """Write `model` (holding all its weights in memory) as one file, or as `graph_file` and its
    `data_path` when its weights pass SINGLE_FILE_BYTES (`data_file=True`: whatever their size). A
    data file left from before is removed first (onnx appends to one). Afterwards `model` no longer
    holds the weights it moved out."""
    import onnx
    from onnx.external_data_helper import set_external_data

    data = data_path(Path(graph_file))
    data.unlink(missing_ok=True)
    if needs_data_file(model) if data_file is None else data_file:
        for tensor in model.graph.initializer:
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_TENSOR_BYTES:
                set_external_data(tensor, data.name)
    onnx.save_model(model, str(graph_file))


def weights_aside(graph_file: Path, folder: Path) -> Path:
    """A copy of `graph_file` in `folder` with its weights in a data file beside it, whatever their
    size, for stages that should not hold the weights in memory."""
    import onnx

    copy = Path(folder) / "graph.onnx"
    save_graph(onnx.load(str(graph_file)), copy, data_file=True)
    return copy


@contextlib.contextmanager
def working_directory(folder):
    """cd into `folder` for the block: onnx reads an external tensor relative to the current one."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def needs_data_file(model) -> bool:
    """For writers other than `save_graph` (onnxruntime's OnnxModel.save_model_to_file, which
    names the file the same way): whether this graph's weights go to a data file."""
    return weight_bytes(model) > SINGLE_FILE_BYTES


def data_file(graph_file: Path) -> Path | None:
    """The data file `graph_file` reads its weights from, or None when it holds them itself.

    The model folder lists one data file per variant under a fixed name: a graph reading any other
    file (one per tensor, optimum's `model.onnx_data`) is an ExportError, as is a missing one.
    """
    import onnx

    graph_file = Path(graph_file)
    locations = external_locations(onnx.load(str(graph_file), load_external_data=False))
    if not locations:
        return None
    expected = data_path(graph_file)
    if locations != {expected.name}:
        raise ExportError(f"{graph_file.name} reads its weights from {sorted(locations)}, expected the one file "
                          f"{expected.name}")
    if not expected.is_file():
        raise ExportError(f"{graph_file.name} reads its weights from {expected.name}, which was not written")
    return expected


def match_permissions(graph_file: Path, data: Path) -> None:
    """Give the data file the graph file's permissions: onnx writes it readable by its owner only
    (0600, against 0644 for the graph under a 0022 umask), so a folder exported by one user could
    not be served by another that can read the graph."""
    data.chmod(Path(graph_file).stat().st_mode & 0o777)


def remove_graph(graph_file: Path) -> None:
    """Delete a graph file and its data file, if it has one."""
    Path(graph_file).unlink(missing_ok=True)
    data_path(Path(graph_file)).unlink(missing_ok=True)


def external_locations(model) -> set[str]:
    """The files named by the graph's external tensors (initializers and node attributes)."""
    from onnx import TensorProto

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    yield from tensors(subgraph)

    return {entry.value for tensor in tensors(model.graph) if tensor.data_location == TensorProto.EXTERNAL
            for entry in tensor.external_data if entry.key == "location"}


def cpu_session(model, folder: Path | None = None):
    """An onnxruntime CPU session of an in-memory graph (a ModelProto or its serialized bytes) whose
    data file, if any, is in `folder`.

    For a graph loaded with `load_external_data=False`: a graph past 2 GiB cannot be serialized
    with its weights, so it goes to onnxruntime without them and onnxruntime reads them from there.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    serialized = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(serialized, sess_options=options, providers=["CPUExecutionProvider"])
