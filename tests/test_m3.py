"""bge-m3: the export with its heads in the graph, and M3Embedder's outputs against a PyTorch reference
written here from FlagEmbedding's formulas (transformers' XLM-RoBERTa plus the two linear heads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import bgeort
from bgeort.errors import ModelFolderError, TruncationWarning
from export import export_model
from export.source import ExportError

from .conftest import make_m3_source

pytestmark = pytest.mark.export

TEXTS = ["", "hello", "what is a panda?", "the giant panda is a bear species of china and eats bamboo",
         "a cat on a dog, a dog on a cat. hi hi hi hi", "Ünïcödé 北京 🙂 panda"]
UNUSED = {0, 1, 2, 3}  # <s>, <pad>, </s>, <unk> of conftest's Unigram tokenizer


@pytest.fixture(scope="module")
def reference(m3_source):
    """Per text (no padding): normalized CLS state, lexical weights by FlagEmbedding's rule, normalized
    ColBERT vectors of every token after the first."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(m3_source))
    model = AutoModel.from_pretrained(str(m3_source), dtype=torch.float32).eval()
    heads = {}
    for name, width in (("sparse", 1), ("colbert", 32)):
        layer = torch.nn.Linear(32, width)
        layer.load_state_dict(torch.load(m3_source / f"{name}_linear.pt", weights_only=True))
        heads[name] = layer.eval()

    def encode(text: str, max_length: int = 128):
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
            weights = torch.relu(heads["sparse"](hidden))[0, :, 0].tolist()
            colbert = torch.nn.functional.normalize(heads["colbert"](hidden[:, 1:]), dim=-1)[0].numpy()
            dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1)[0].numpy()
        lexical = {}
        for token, weight in zip(batch["input_ids"][0].tolist(), weights):
            if token not in UNUSED and weight > 0:
                lexical[str(token)] = max(lexical.get(str(token), 0.0), weight)
        return dense, lexical, colbert, weights, batch["input_ids"][0].tolist()

    return encode


def everything(model, texts, **options):
    return model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True, **options)


def test_manifest_and_variants(m3_model):
    manifest = bgeort.load_manifest(m3_model)
    assert manifest.m3["unused_token_ids"] == sorted(UNUSED)
    assert manifest.m3["colbert_dim"] == 32 and manifest.dim == 32 and manifest.max_length == 128
    assert set(manifest.variants) == {"fp32", "fp32-unfused", "int8", "fp16"}
    for precision, variant in manifest.variants.items():
        assert variant.parity["passed"], (precision, variant.parity["failures"])
    assert manifest.variants["fp32"].parity["sparse_id_sets_equal"] == 1.0
    files = sorted(path.name for path in m3_model.iterdir())
    assert not [name for name in files if name.endswith((".pt", ".bin", ".safetensors"))], files  # no heads at run time


@pytest.mark.parametrize("precision", ["fp32", "fp32-unfused"])
def test_every_output_equals_the_pytorch_reference(m3_model, reference, precision):
    model = bgeort.M3Embedder(m3_model, precision=precision, device="cpu")
    out = everything(model, TEXTS)
    assert out["dense_vecs"].shape == (len(TEXTS), 32) and out["dense_vecs"].dtype == np.float32
    for i, text in enumerate(TEXTS):
        dense, lexical, colbert, _, ids = reference(text)
        np.testing.assert_allclose(out["dense_vecs"][i], dense, atol=1e-4)
        assert out["colbert_vecs"][i].shape == (len(ids) - 1, 32) and out["colbert_vecs"][i].dtype == np.float32
        np.testing.assert_allclose(out["colbert_vecs"][i], colbert, atol=1e-4)
        ours = out["lexical_weights"][i]
        assert set(ours) == set(lexical), text
        for key, weight in lexical.items():
            assert ours[key] == pytest.approx(weight, abs=1e-4)
        assert out["sparse_indices"][i].tolist() == sorted(int(k) for k in lexical)
        np.testing.assert_allclose(out["sparse_values"][i], [lexical[str(k)] for k in out["sparse_indices"][i]],
                                   atol=1e-4)


def test_special_tokens_are_dropped_even_with_positive_weights(m3_model, reference):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    weights = everything(model, TEXTS)["lexical_weights"]
    positive_special = [(t, i) for t in TEXTS for i, w in zip(reference(t)[4], reference(t)[3])
                        if i in UNUSED and w > 0]
    assert positive_special, "the random heads gave no special token a positive weight: the check would be empty"
    assert any(w <= 0 for t in TEXTS for w in reference(t)[3]), "no token weight <= 0: that drop is not exercised"
    for lexical in weights:
        assert not UNUSED & {int(key) for key in lexical}
        assert all(weight > 0 for weight in lexical.values())


def test_only_what_is_asked(m3_model):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    dense_only = model.encode(TEXTS)
    assert dense_only["lexical_weights"] is None and dense_only["colbert_vecs"] is None
    assert "sparse_indices" not in dense_only
    sparse_only = model.encode(TEXTS, return_dense=False, return_sparse=True)
    assert sparse_only["dense_vecs"] is None and sparse_only["colbert_vecs"] is None
    np.testing.assert_allclose(dense_only["dense_vecs"], everything(model, TEXTS)["dense_vecs"], atol=1e-6)
    # bgeort.Embedder opens the folder for dense use, with the same vectors
    np.testing.assert_allclose(bgeort.Embedder(m3_model, precision="fp32").encode(TEXTS), dense_only["dense_vecs"],
                               atol=1e-6)
    single = everything(model, "hello")
    assert single["dense_vecs"].shape == (32,) and isinstance(single["lexical_weights"], dict)
    empty = everything(model, [])
    assert empty["dense_vecs"].shape == (0, 32) and empty["lexical_weights"] == [] and empty["colbert_vecs"] == []


def test_batch_invariance_and_padding(m3_model):
    """A text's outputs do not depend on its neighbours, the batch size or the padding around it."""
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu", threads=1)
    together = everything(model, TEXTS, batch_size=len(TEXTS))
    counts = model.token_counts(TEXTS)
    for i, text in enumerate(TEXTS):
        alone = everything(model, [text])
        np.testing.assert_allclose(together["dense_vecs"][i], alone["dense_vecs"][0], atol=1e-5)
        assert together["colbert_vecs"][i].shape[0] == counts[i] - 1  # padding rows dropped
        np.testing.assert_allclose(together["colbert_vecs"][i], alone["colbert_vecs"][0], atol=1e-5)
        assert together["lexical_weights"][i].keys() == alone["lexical_weights"][0].keys()


def _ops_run(graph_file, feeds) -> dict:
    """Per op type, how many nodes onnxruntime ran for `feeds` (its profiler, If branches included)."""
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(graph_file.parent.parent / "profile")
    session = ort.InferenceSession(str(graph_file), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    return collections.Counter(event["args"].get("op_name") for event in events
                               if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"))


@pytest.mark.parametrize("precision", ["fp32-unfused", "int8"])
def test_unpadded_batches_run_the_mask_free_attention(m3_model, m3_source, reference, precision, tmp_path):
    """Every layer's attention is an If: MultiHeadAttention without a mask (memory linear in the length)
    when no row is padded, the exported MatMul/Softmax path otherwise, and the additive mask that path
    reads is built only then; both give the reference's outputs."""
    layers = json.loads((m3_source / "config.json").read_text())["num_hidden_layers"]
    manifest = bgeort.load_manifest(m3_model)
    variant = manifest.variants[precision]
    assert variant.parity["mask_free_attention_layers"] == layers
    model = onnx.load(str(m3_model / variant.file))
    branches = [node for node in model.graph.node if node.op_type == "If" and "/layer" in node.name]
    assert len(branches) == layers
    # the [batch, 1, S, S] additive mask is built only for padded batches (1 GiB at 8,192 tokens)
    [mask] = [node for node in model.graph.node if node.op_type == "If" and "/mask" in node.name]
    assert [n.op_type for n in next(a.g for a in mask.attribute if a.name == "then_branch").node] == ["Constant"]
    mask_expands = sum(n.op_type == "Expand" for n in next(a.g for a in mask.attribute if a.name == "else_branch").node)
    assert mask_expands >= 1
    for node in branches:
        then = next(a.g for a in node.attribute if a.name == "then_branch")
        assert [(n.op_type, len(n.input)) for n in then.node] == [("MultiHeadAttention", 3)]  # no mask input
        plain = next(a.g for a in node.attribute if a.name == "else_branch")
        assert "Softmax" in {n.op_type for n in plain.node}
    ids = np.array([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]], dtype=np.int64)
    unpadded = _ops_run(m3_model / variant.file, {"input_ids": ids[:1], "attention_mask": np.ones_like(ids[:1])})
    padded = _ops_run(m3_model / variant.file, {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)})
    assert unpadded["MultiHeadAttention"] == layers and unpadded["Softmax"] == 0
    assert padded["MultiHeadAttention"] == 0 and padded["Softmax"] == layers
    assert padded["Expand"] - unpadded["Expand"] == mask_expands
    if precision == "int8":
        return  # int8's outputs against fp32: the export's parity gates (variant.parity)
    m3 = bgeort.M3Embedder(m3_model, precision=precision, device="cpu")
    texts = TEXTS[1:]
    alone = [everything(m3, [text]) for text in texts]  # each run unpadded: the mask-free branch
    together = everything(m3, texts, batch_size=len(texts))  # padded: the exported branch
    for i, text in enumerate(texts):
        dense, lexical, colbert, _, _ = reference(text)
        for out, row in ((alone[i], 0), (together, i)):
            np.testing.assert_allclose(out["dense_vecs"][row], dense, atol=1e-4)
            np.testing.assert_allclose(out["colbert_vecs"][row], colbert, atol=1e-4)
            assert set(out["lexical_weights"][row]) == set(lexical)


def test_long_input_is_truncated_with_a_warning_and_matches_the_reference(m3_model, reference):
    """Past max_length, and past the length from which the tokenizer reads a prefix only."""
    long_text = " ".join(["the giant panda eats bamboo in china"] * 400)  # ~2,000 tokens, 14,000 characters
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    with pytest.warns(TruncationWarning, match="indices 1"):
        out = everything(model, ["hi", long_text])
    dense, lexical, colbert, _, _ = reference(long_text)
    assert out["colbert_vecs"][1].shape == (127, 32)
    np.testing.assert_allclose(out["dense_vecs"][1], dense, atol=1e-4)
    np.testing.assert_allclose(out["colbert_vecs"][1], colbert, atol=1e-4)
    assert set(out["lexical_weights"][1]) == set(lexical)
    assert model.token_counts([long_text])[0] > 128
    with pytest.warns(TruncationWarning):
        cut = model.encode([long_text], max_length=16, return_colbert_vecs=True)
    assert cut["colbert_vecs"][0].shape == (15, 32)


def test_score_functions_against_hand_computed_values(m3_model):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    assert model.compute_lexical_matching_score({"5": 0.5, "7": 2.0}, {"7": 3.0, "9": 1.0}) == pytest.approx(6.0)
    matrix = model.compute_lexical_matching_score([{"5": 1.0}, {"6": 2.0}], [{"5": 3.0}, {"6": 1.0}, {}])
    np.testing.assert_allclose(matrix, [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    assert model.colbert_score(q, p) == pytest.approx((1.0 + 0.8) / 2)
    with pytest.raises(TypeError, match="two dicts or two lists"):
        model.compute_lexical_matching_score({"1": 1.0}, [{"1": 1.0}])


def test_compute_score_modes_and_weights(m3_model):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    pairs = [("what is a panda?", "the giant panda is a bear"), ("hello", "hi hi"), ("cat", "")]
    weights = [0.4, 0.2, 0.4]
    scores = model.compute_score(pairs, weights_for_different_modes=weights)
    q = everything(model, [a for a, _ in pairs])
    p = everything(model, [b for _, b in pairs])
    for i in range(len(pairs)):
        dense = float(q["dense_vecs"][i] @ p["dense_vecs"][i])
        sparse = model.compute_lexical_matching_score(q["lexical_weights"][i], p["lexical_weights"][i])
        colbert = model.colbert_score(q["colbert_vecs"][i], p["colbert_vecs"][i])
        assert scores["dense"][i] == pytest.approx(dense, abs=1e-6)
        assert scores["sparse"][i] == pytest.approx(sparse, abs=1e-6)
        assert scores["colbert"][i] == pytest.approx(colbert, abs=1e-6)
        assert scores["sparse+dense"][i] == pytest.approx((0.2 * sparse + 0.4 * dense) / 0.6, abs=1e-6)
        assert scores["colbert+sparse+dense"][i] == pytest.approx(0.4 * dense + 0.2 * sparse + 0.4 * colbert, abs=1e-6)
    one = model.compute_score(pairs[0])
    assert one["dense"] == pytest.approx(scores["dense"][0], abs=1e-6)
    assert one["colbert+sparse+dense"] == pytest.approx(
        (scores["dense"][0] + scores["sparse"][0] + scores["colbert"][0]) / 3, abs=1e-6)
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0], "abc"):
        with pytest.raises((TypeError, ValueError), match="weights_for_different_modes"):
            model.compute_score(pairs, weights_for_different_modes=bad)
    with pytest.raises(TypeError, match=r"sentence_pairs\[1\]"):
        model.compute_score([("q", "p"), ("q",)])


def test_convert_id_to_token(m3_model):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    lexical = model.encode("panda bear", return_dense=False, return_sparse=True)["lexical_weights"]
    tokens = model.convert_id_to_token(lexical)
    assert set(tokens) <= {"panda", "bear"} and tokens
    assert model.convert_id_to_token([lexical]) == [tokens]


@pytest.mark.parametrize("bad, error", [(None, TypeError), ([b"bytes"], TypeError), (["ok", 3], TypeError),
                                        ([["nested"]], TypeError), (["bad \ud800"], ValueError)])
def test_bad_input_names_the_problem_and_the_model_keeps_working(m3_model, bad, error):
    model = bgeort.M3Embedder(m3_model, precision="fp32", device="cpu")
    with pytest.raises(error, match=r"sentences|\[\d\]|Unicode"):
        everything(model, bad)
    assert everything(model, ["hello"])["dense_vecs"].shape == (1, 32)


def test_a_dense_folder_is_refused_with_the_way_to_open_it(tiny_model):
    with pytest.raises(ModelFolderError, match="bgeort.Embedder"):
        bgeort.M3Embedder(tiny_model)


@pytest.mark.parametrize("missing", ["sparse_linear.pt", "colbert_linear.pt"])
def test_export_refuses_a_source_without_a_head_file(tmp_path, missing):
    kept = tuple(name for name in ("sparse_linear.pt", "colbert_linear.pt") if name != missing)
    source = make_m3_source(tmp_path / "no-head", head_files=kept)
    with pytest.raises(ExportError, match=missing):
        export_model(str(source), out=tmp_path / "models", family="bge-m3", max_length=64, precisions=())
    assert not (tmp_path / "models" / "bge-m3").exists()
    with pytest.raises(ExportError, match=missing):  # one head file is enough to ask for both, without the row
        export_model(str(source), out=tmp_path / "models", max_length=64, pooling="cls", precisions=())


def test_head_file_that_is_not_a_state_dict_is_refused(tmp_path):
    source = make_m3_source(tmp_path / "bad-head")
    (source / "sparse_linear.pt").write_bytes(b"not a torch file")
    with pytest.raises(ExportError, match="sparse_linear.pt is not a weights-only"):
        export_model(str(source), out=tmp_path / "models", family="bge-m3", max_length=64, precisions=())


def test_manifest_m3_entry_is_validated(m3_model, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(m3_model, folder)
    data = json.loads((folder / "bgeort.json").read_text())
    data["m3"]["unused_token_ids"] = ["0"]
    (folder / "bgeort.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="'m3'"):
        bgeort.load_manifest(folder)
    del data["m3"]["colbert_dim"]
    (folder / "bgeort.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="colbert_dim"):
        bgeort.load_manifest(folder)


def test_the_command_line_and_an_integration_take_a_bge_m3_folder_for_dense_vectors(m3_model, tmp_path):
    import subprocess
    import sys

    from bgeort.integrations.langchain import BgeortEmbeddings

    want = bgeort.M3Embedder(m3_model).encode(["hello", "the giant panda"])["dense_vecs"]
    output = tmp_path / "out.jsonl"
    (tmp_path / "in.txt").write_text("hello\nthe giant panda\n")
    done = subprocess.run([sys.executable, "-m", "bgeort", "embed", str(m3_model), str(tmp_path / "in.txt"), "-o",
                           str(output), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    np.testing.assert_allclose([row["embedding"] for row in rows], want, atol=1e-6)
    np.testing.assert_allclose(BgeortEmbeddings(model_path=m3_model).embed_documents(["hello", "the giant panda"]),
                               want, atol=1e-6)
