"""bgeort.Reranker on generated XLM-RoBERTa and BERT cross-encoders, and on a cross-encoder built
from the real MiniLM backbone with a seeded head: PyTorch parity, API, bad input."""

import csv
import warnings

import numpy as np
import pytest

import bgeort
from bgeort.errors import TruncationWarning
from bgeort.batching import plan_batches
from bgeort.reranker import sigmoid
from export import export_model, verify
from export.families import FAMILIES
from tests.conftest import DATA, MINILM, make_classifier_source

pytestmark = pytest.mark.export

PAIRS = [("what is panda?", "hi"), ("what is panda?", "the giant panda is a bear species of china."),
         ("hello world", "a cat on the dog"), ("", "bamboo"), ("the bear", ""),
         ("where is the panda?", "in china the giant panda eats bamboo and is a bear of species")]


def flag_reference(folder, pairs, max_length):
    """FlagReranker.compute_score's computation, written out with transformers + PyTorch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    features = []
    for query, passage in pairs:
        q = tokenizer(query, add_special_tokens=False, truncation=True, max_length=max_length * 3 // 4)["input_ids"]
        p = tokenizer(passage, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        features.append(tokenizer.prepare_for_model(q, p, truncation="only_second", max_length=max_length))
    batch = tokenizer.pad(features, padding=True, return_tensors="pt")  # padded, as FlagReranker runs it
    with torch.inference_mode():
        return model(**batch).logits[:, 0].numpy()


@pytest.mark.parametrize("fixture, model_type", [("xlmr_reranker", "xlm-roberta"), ("bert_reranker", "bert")])
def test_logits_match_pytorch_on_padded_batches(request, fixture, model_type):
    folder = request.getfixturevalue(fixture)
    manifest = bgeort.load_manifest(folder)
    assert (manifest.kind, manifest.pooling, manifest.output, manifest.dim) == ("reranker", "none", "logits", 1)
    assert manifest.provenance["model_type"] == model_type
    source = manifest.provenance["source"]
    long_passage = " ".join(["the giant panda eats bamboo"] * 60)  # past the 130-token window
    pairs = PAIRS + [("what is panda?", long_passage)]
    reference = flag_reference(source, pairs, manifest.max_length)
    model = bgeort.Reranker(folder, precision="fp32")
    with pytest.warns(TruncationWarning, match=r"1 of 7 inputs"):
        for batch_size in (1, 3, len(pairs)):
            scores = model.compute_score(pairs, batch_size=batch_size)
            assert np.abs(scores - reference).max() <= 1e-3
            assert (np.argsort(scores) == np.argsort(reference)).all()
    assert np.ptp(reference) > 0.05  # the seeded head gives scores that actually differ


def test_xlmr_embeddings_stay_unfused_and_bert_fused(xlmr_reranker, bert_reranker):
    # XLM-R positions count from padding_idx + 1: the fused embedding op would get them wrong.
    assert bgeort.load_manifest(xlmr_reranker).variants["fp32"].parity["fusions"].get("EmbedLayerNormalization", 0) == 0
    assert bgeort.load_manifest(bert_reranker).variants["fp32"].parity["fusions"]["EmbedLayerNormalization"] == 1
    assert "token_type_ids" not in bgeort.load_manifest(xlmr_reranker).inputs
    assert "token_type_ids" in bgeort.load_manifest(bert_reranker).inputs


def test_flagreranker_shapes_and_normalize(bert_reranker):
    model = bgeort.Reranker(bert_reranker, precision="fp32")
    one = model.compute_score(["what is panda?", "hi"])
    assert isinstance(one, float)
    many = model.compute_score([list(p) for p in PAIRS])
    assert many.shape == (len(PAIRS),) and many.dtype == np.float32
    assert one == pytest.approx(float(many[0]), abs=1e-5)
    normalized = model.compute_score(PAIRS, normalize=True)
    np.testing.assert_allclose(normalized, 1 / (1 + np.exp(-many.astype(np.float64))), atol=1e-6)
    assert model.compute_score([]).shape == (0,)


def test_rerank_sorts_best_first_stable_and_top_k(bert_reranker):
    model = bgeort.Reranker(bert_reranker, precision="fp32")
    documents = ["hi", "the giant panda is a bear", "hi", "bamboo", "the giant panda is a bear"]
    scores = model.compute_score([("what is panda?", d) for d in documents], normalize=True)
    ranking = model.rerank("what is panda?", documents)
    expected = sorted(range(len(documents)), key=lambda i: (-scores[i], i))  # ties: input order
    assert ranking.indices.tolist() == expected
    np.testing.assert_allclose(ranking.scores, scores[expected], atol=1e-6)
    indices, top = model.rerank("what is panda?", documents, top_k=2)
    assert indices.tolist() == expected[:2] and len(top) == 2
    empty = model.rerank("what is panda?", [])
    assert len(empty.indices) == 0 and len(empty.scores) == 0


def test_query_keeps_at_most_three_quarters_of_the_window(bert_reranker):
    model = bgeort.Reranker(bert_reranker, precision="fp32")
    tokenizer = model._model.tokenizer
    long = " ".join(["panda"] * 500)
    encoded, owners = tokenizer.encode_pairs([long, "hi"], ["bamboo " * 500, "hello"], max_length=128)
    assert encoded.lengths.tolist() == [128, 5]
    first = encoded.type_ids[0]
    assert first.count(0) == 96 + 2  # [CLS] + 96 query tokens + [SEP]
    assert encoded.truncated.tolist() == [True, False] and owners.tolist() == [0, 1]


def test_sliding_window_scores_the_best_window(bert_reranker):
    model = bgeort.Reranker(bert_reranker, precision="fp32")
    filler = " ".join(["cat on the dog"] * 60)
    relevant = "the giant panda is a bear species of china"
    query = "what is panda?"
    windowed = model.compute_score([(query, filler + " " + relevant)], sliding_window=True)
    # the first window is what plain truncation scores; the best window is at least that good
    head = model.compute_score([(query, filler + " " + relevant)])
    assert windowed[0] >= head - 1e-4
    tail = model.compute_score([(query, relevant)])
    tokenizer = model._model.tokenizer
    encoded, owners = tokenizer.encode_pairs([query], [filler + " " + relevant], windows=True)
    assert len(owners) > 2 and set(owners.tolist()) == {0} and not encoded.truncated.any()
    assert encoded.lengths.max() <= model.max_length
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # windows cover the passage: nothing is truncated
        model.compute_score([(query, filler + " " + relevant)], sliding_window=True)
    assert np.isfinite(tail)


def test_pipelined_tokenizing_gives_the_same_scores_and_warnings(bert_reranker, monkeypatch):
    """The GPU path tokenizes the next slice of pairs while one runs; run here on the CPU session."""
    long_pair = ("what is panda?", " ".join(["cat on the dog"] * 60))
    pairs = PAIRS * 2 + [long_pair] + PAIRS
    plain = bgeort.Reranker(bert_reranker, precision="fp32")
    with pytest.warns(TruncationWarning, match=r"1 of 19 inputs .*indices 12\)"):
        expected = plain.compute_score(pairs, normalize=True)
    pipelined = bgeort.Reranker(bert_reranker, precision="fp32")
    pipelined._model.pipelined = True
    monkeypatch.setattr(bgeort.model, "PIPELINE_TEXTS", 5)
    with pytest.warns(TruncationWarning, match=r"1 of 19 inputs .*indices 12\)"):
        scores = pipelined.compute_score(pairs, normalize=True)
    assert scores.shape == (19,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-6)


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([("q", "p"), ("q",)], r"pairs\[1\] is \('q',\), not a \[query, passage\] pair"),
        ([("q", "p"), ("q", None)], r"pairs\[1\]"),
        ([["q", 3]], r"pairs\[0\]"),
        (None, "got NoneType"),
        ("just a string", "got str"),
    ],
)
def test_bad_pairs_name_the_index(bert_reranker, pairs, message):
    model = bgeort.Reranker(bert_reranker, precision="fp32")
    with pytest.raises(TypeError, match=message):
        model.compute_score(pairs)
    with pytest.raises(TypeError, match="query must be a str"):
        model.rerank(None, ["doc"])
    with pytest.raises(TypeError, match=r"documents\[1\] is int"):
        model.rerank("q", ["doc", 1])


def test_kind_mismatch_names_the_right_class(bert_reranker, tiny_model):
    with pytest.raises(bgeort.ModelFolderError, match=r"holds a reranker model, not an embedder: open it with bgeort.Reranker \(on the command line: bgeort rerank\)"):
        bgeort.Embedder(bert_reranker)
    with pytest.raises(bgeort.ModelFolderError, match="holds an embedder model, not a reranker: open it with bgeort.Embedder"):
        bgeort.Reranker(tiny_model)


def test_sigmoid_is_stable():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_reranker_rows_in_the_family_table():
    for name in ("bge-reranker-base", "bge-reranker-large", "bge-reranker-v2-m3"):
        row = FAMILIES[name]
        assert (row.kind, row.hub_id) == ("reranker", f"BAAI/{name}")
    assert FAMILIES["bge-reranker-base"].max_length == 512
    assert FAMILIES["bge-reranker-v2-m3"].max_length > 512


@pytest.mark.realweights
@pytest.mark.slow
def test_minilm_backbone_cross_encoder_matches_pytorch_on_stsb(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(MINILM), num_labels=1).eval()
    source = tmp_path / "minilm-cross-encoder"
    model.save_pretrained(source)
    AutoTokenizer.from_pretrained(str(MINILM)).save_pretrained(source)
    folder = export_model(str(source), out=tmp_path / "models", precisions=("fp32", "int8"))
    manifest = bgeort.load_manifest(folder)
    assert manifest.max_length == 512 and manifest.kind == "reranker"

    with open(DATA / "stsb" / "stsb-en-test.csv", newline="", encoding="utf-8") as stream:
        pairs = [(row[0], row[1]) for row in csv.reader(stream)][:300]
    reference = flag_reference(source, pairs, 512)
    fp32 = bgeort.Reranker(folder, precision="fp32").compute_score(pairs)
    assert np.abs(fp32 - reference).max() <= 1e-3
    from scipy.stats import spearmanr

    assert spearmanr(fp32, reference)[0] >= 0.99999  # the STS-B pairs rank the same
    # The random head scores every pair nearly alike (probe logits std ~0.008): int8 is judged on
    # its error against that spread, not on the ranks of near-ties (export/verify.py NEAR_TIE_STD).
    parity = manifest.variants["int8"].parity
    assert parity["passed"] and parity["reference_std"] < verify.NEAR_TIE_STD
    assert parity["max_abs_diff"] <= verify.NEAR_TIE_ERROR * parity["reference_std"]
    int8 = bgeort.Reranker(folder, precision="int8").compute_score(pairs)
    assert np.abs(int8 - reference).max() <= verify.NEAR_TIE_ERROR * reference.std()
    assert spearmanr(int8, reference)[0] >= 0.99  # STS-B's 300 pairs spread more than the probes (0.997)


def _judged(precision, candidate, reference):
    numbers = verify.compare_scores(np.asarray(candidate, np.float32), np.asarray(reference, np.float64),
                                    groups=len(reference) // len(verify._PASSAGES))
    return numbers, verify.judge_scores(precision, numbers)


def _near_tied_scores():
    # as the seeded random head on MiniLM scores the 23 probe pairs: within ~0.03 logits, std ~0.008
    return 0.02 + 0.008 * np.random.default_rng(0).standard_normal(20)


def test_near_tied_int8_passes_on_its_error_against_the_spread():
    reference = _near_tied_scores()
    small = 0.0018 * np.random.default_rng(1).uniform(-1, 1, reference.size)  # int8's measured max error
    numbers, failures = _judged("int8", reference + small, reference)
    assert numbers["spearman"] < 0.99  # the rank rule alone would drop it
    assert numbers["reference_std"] < verify.NEAR_TIE_STD and failures == []
    assert _judged("fp16", reference + small, reference)[1] == []
    # fp32 keeps its exact bounds whatever the spread
    assert _judged("fp32", reference + small, reference)[1]


@pytest.mark.parametrize("wrong", ["permuted", "noise at the spread", "constant"])
def test_wrong_int8_of_a_near_tied_model_still_fails(wrong):
    reference = _near_tied_scores()
    rng = np.random.default_rng(2)
    candidate = {"permuted": rng.permutation(reference),
                 "noise at the spread": reference + reference.std() * rng.standard_normal(reference.size),
                 "constant": np.full_like(reference, reference.mean())}[wrong]
    numbers, failures = _judged("int8", candidate, reference)
    assert numbers["reference_std"] < verify.NEAR_TIE_STD
    assert failures and "nearly tied" in failures[0]


def test_spread_scores_are_still_judged_by_rank():
    # a trained reranker's logits, spread over several units: the near-tie rule never applies
    reference = 4.0 * np.random.default_rng(3).standard_normal(20)
    rng = np.random.default_rng(4)
    for scale, passes in ((0.01, True), (0.3, False)):
        candidate = reference + scale * reference.std() * rng.standard_normal(reference.size)
        numbers, failures = _judged("int8", candidate, reference)
        assert numbers["reference_std"] > verify.NEAR_TIE_STD
        assert (failures == []) is passes, (scale, numbers, failures)
    numbers, failures = _judged("int8", rng.permutation(reference), reference)
    assert any(failure.startswith("spearman") for failure in failures)


def test_near_tied_reranker_exports_its_int8(tmp_path):
    """A head scaled down 1000x ties every score (std well under NEAR_TIE_STD) and shrinks int8's
    error with them: the int8 variant is judged by value and written."""
    import torch
    from transformers import AutoModelForSequenceClassification

    source = make_classifier_source(tmp_path / "near-tied-reranker", model_type="xlm-roberta")
    model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(1e-3)
    model.save_pretrained(source)
    folder = export_model(str(source), out=tmp_path / "models", precisions=("fp32", "int8"))
    parity = bgeort.load_manifest(folder).variants["int8"].parity
    assert parity["passed"] and parity["reference_std"] < verify.NEAR_TIE_STD
    assert parity["thresholds"]["near_tie"] == {"reference_std_below": verify.NEAR_TIE_STD,
                                                "max_abs_diff_per_std": verify.NEAR_TIE_ERROR}
    reference = flag_reference(source, PAIRS, bgeort.load_manifest(folder).max_length)
    int8 = bgeort.Reranker(folder, precision="int8").compute_score(PAIRS)
    assert np.abs(int8 - reference).max() <= verify.NEAR_TIE_ERROR * reference.std()


def test_long_context_reranker_gets_the_mask_free_attention(tmp_path):
    """Past 512 tokens (bge-reranker-v2-m3 reads 8,192) the CPU graphs get export/attention.py's
    mask-free path, the last layer's narrowed attention included; a lone pair (unpadded: that path)
    and the same pair in a padded batch score as PyTorch does."""
    layers = 2
    source = make_classifier_source(tmp_path / "long-xlmr-reranker", model_type="xlm-roberta", layers=layers,
                                    positions=1026, max_length=1024)
    folder = export_model(str(source), out=tmp_path / "models", max_length=1024, precisions=("fp32", "int8"))
    manifest = bgeort.load_manifest(folder)
    for precision in ("fp32-unfused", "int8"):
        assert manifest.variants[precision].parity["mask_free_attention_layers"] == layers, precision
    long_passage = " ".join(["the giant panda eats bamboo in the mountains of china"] * 40)  # ~450 tokens
    # lengths within a quarter of each other: one padded batch of both (bgeort/batching.py)
    pairs = [("what do pandas eat?", long_passage), ("what do pandas eat?", long_passage[:len(long_passage) * 9 // 10])]
    model = bgeort.Reranker(folder, precision="fp32", device="cpu")
    alone = np.array([model.compute_score([pair])[0] for pair in pairs])
    padded = bgeort.Reranker(folder, precision="fp32", device="cpu", max_batch_tokens=4096)
    together = padded.compute_score(pairs, batch_size=2)
    encoded, _ = padded._model.tokenizer.encode_pairs([q for q, _ in pairs], [p for _, p in pairs], max_length=1024)
    lengths = encoded.lengths
    assert lengths[0] != lengths[1] and len(plan_batches(lengths, batch_size=2, max_tokens=4096)) == 1  # padded
    reference = np.array([flag_reference(source, [pair], 1024)[0] for pair in pairs])
    np.testing.assert_allclose(alone, reference, atol=1e-4)
    np.testing.assert_allclose(together, reference, atol=1e-4)
