"""Peak memory of one attention layer at bge-m3's width (16 heads x 64) and 8,192 tokens on
onnxruntime's CPU provider, three ways: the plain graph's ops (MatMul, Softmax, MatMul, as the
exporter writes them), com.microsoft MultiHeadAttention with a key padding mask (what a fused graph
with bgeort's attention_mask input gets), and MultiHeadAttention without one (onnxruntime's CPU
kernel runs its MLAS flash attention only then). Each in a fresh process; the launcher reads its
children's ru_maxrss. bench/README.md ("bge-m3's long texts") has what it showed.

    python bench/m3_attention.py [--tokens 8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

HEADS, HEAD_SIZE = 16, 64


def build(kind: str, tokens: int):
    from onnx import TensorProto, helper

    hidden = HEADS * HEAD_SIZE
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, tokens, hidden])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, tokens, hidden])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, tokens, hidden])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, tokens, hidden])
    inputs = [q, k, v]
    if kind == "plain":
        shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, tokens, HEADS, HEAD_SIZE])
        back = helper.make_tensor("back", TensorProto.INT64, [3], [1, tokens, hidden])
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [HEAD_SIZE ** -0.5])
        nodes = []
        for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            nodes += [helper.make_node("Reshape", [name, "shape"], [name + "4"]),
                      helper.make_node("Transpose", [name + "4"], [name + "t"], perm=perm)]
        nodes += [helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
                  helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
                  helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
                  helper.make_node("MatMul", ["probs", "vt"], ["ctx"]),
                  helper.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["ctxt", "back"], ["out"])]
        graph = helper.make_graph(nodes, kind, inputs, [out], initializer=[shape, back, scale])
    else:
        names = ["q", "k", "v"]
        if kind == "mha-mask":
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, [1, tokens]))
            names += ["", "mask"]
        node = helper.make_node("MultiHeadAttention", names, ["out"], domain="com.microsoft", num_heads=HEADS)
        graph = helper.make_graph([node], kind, inputs, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def child(kind: str, tokens: int, threads: int) -> None:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(build(kind, tokens).SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {name: rng.standard_normal((1, tokens, HEADS * HEAD_SIZE), dtype=np.float32) for name in "qkv"}
    if kind == "mha-mask":
        feed["mask"] = np.ones((1, tokens), dtype=np.int32)
    mark = time.perf_counter()
    session.run(None, feed)
    print(json.dumps({"seconds": time.perf_counter() - mark}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "mha-mask", "mha"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.tokens, args.threads)
        return 0
    scores_gib = HEADS * args.tokens ** 2 * 4 / 2**30
    print(f"attention scores at {args.tokens} tokens: {scores_gib:.2f} GiB per [1, {HEADS}, S, S] float tensor")
    launcher = ("import json, resource, subprocess, sys\n"
                "out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True).stdout\n"
                "print(json.dumps({'child': out.strip(), 'peak': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    for kind in ("plain", "mha-mask", "mha"):
        done = subprocess.run([sys.executable, "-c", launcher, sys.executable, __file__, "--child", kind,
                               "--tokens", str(args.tokens), "--threads", str(args.threads)],
                              stdout=subprocess.PIPE, text=True, check=True)
        answer = json.loads(done.stdout)
        seconds = json.loads(answer["child"])["seconds"] if answer["child"] else float("nan")
        print(f"{kind:9s} peak RSS {answer['peak'] / 2**20:.2f} GiB, {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
