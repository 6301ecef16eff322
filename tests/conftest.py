"""Fixtures: model sources generated in code with a fixed seed, and their exports (built once per run).

No downloads: the tiny model's WordPiece tokenizer is built here from a 60-entry vocabulary; the
bge-small-shaped model borrows the real uncased vocabulary of ../shared/models/all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
DATA = SHARED / "data"

TINY_WORDS = ("the a man woman is playing guitar piano on street cat dog sat mat what where who how "
              "panda bear china hello world red blue green house car fast slow eat eats ing ##s ##ing ##ed "
              "one two three four five big small , . ! ?").split()
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS


def build_wordpiece_tokenizer(vocab: list[str]):
    """A BERT-style fast tokenizer, built in code (uncased, WordPiece, [CLS] ... [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


def write_sentence_transformers_files(folder: Path, *, pooling: str, max_seq_length: int, normalize: bool = True):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 0,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))


def make_bert_source(folder: Path, *, layers: int, hidden: int, heads: int, ffn: int, positions: int,
                     tokenizer_from: Path | None, seed: int = 0) -> Path:
    """A BertModel with random weights (fixed seed) saved as a transformers folder with a tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        fast = PreTrainedTokenizerFast(tokenizer_object=build_wordpiece_tokenizer(TINY_VOCAB), unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                       model_max_length=positions)
        fast.save_pretrained(folder)
        vocab_size = len(TINY_VOCAB)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(tokenizer_from / name, folder / name)
        vocab_size = 30522
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=positions, type_vocab_size=2)
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    model.save_pretrained(folder)
    return folder


def bake_source_tokenizer_settings(folder: Path, length: int) -> None:
    """Put fixed padding and truncation into tokenizer.json, as the real MiniLM folder has: the
    export must not let them reach the runtime."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["truncation"] = {"direction": "Right", "max_length": length, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": length}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """2 layers x 32 wide, 128 positions, a sentence-transformers folder asking for mean pooling and
    64 tokens, and a tokenizer.json that says 16 (which must be ignored)."""
    folder = make_bert_source(tmp_path_factory.mktemp("sources") / "tiny-bert", layers=2, hidden=32, heads=4,
                              ffn=64, positions=128, tokenizer_from=None)
    write_sentence_transformers_files(folder, pooling="mean", max_seq_length=64)
    bake_source_tokenizer_settings(folder, 16)
    return folder


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(tiny_source, models_dir) -> Path:
    from export import export_model

    return export_model(str(tiny_source), out=models_dir)


@pytest.fixture(scope="session")
def bge_small_shaped(tmp_path_factory, models_dir) -> Path:
    """bge-small-en-v1.5's exact architecture (12 x 384, 512 positions, real vocab), random weights,
    exported through the family table row."""
    from export import export_model

    source = make_bert_source(tmp_path_factory.mktemp("sources") / "bge-small-en-v1.5", layers=12, hidden=384,
                              heads=12, ffn=1536, positions=512, tokenizer_from=MINILM)
    return export_model(str(source), out=models_dir)


@pytest.fixture(scope="session")
def minilm_model(models_dir) -> Path:
    if not MINILM.is_dir():
        # CI always has ../shared; elsewhere the real-weight tests are skipped, and say so.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{MINILM} is not on this machine")
    from export import export_model

    return export_model(str(MINILM), out=models_dir)


UNIGRAM_PIECES = ["▁the", "▁a", "▁panda", "▁is", "▁bear", "▁what", "▁china", "▁hello", "▁world", "▁giant",
                  "▁species", "▁of", "▁in", "▁and", "▁bamboo", "▁eats", "▁hi", "▁cat", "▁dog", "▁on",
                  "s", "ing", "ed", "▁", "a", "e", "i", "o", "u", "n", "r", "t", "l", "?", ".", ","]


def build_unigram_tokenizer():
    """An XLM-R-style SentencePiece (Unigram) tokenizer built in code: <s> A </s></s> B </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = specials + [(piece, -1.0 - 0.1 * i) for i, piece in enumerate(UNIGRAM_PIECES)] + [("<mask>", 0.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0))
    return tokenizer, len(pieces)


def make_classifier_source(folder: Path, *, model_type: str, layers: int = 2, hidden: int = 32, heads: int = 4,
                           ffn: int = 64, positions: int = 130, seed: int = 0, max_length: int = 128) -> Path:
    """A one-logit *ForSequenceClassification model with random weights (fixed seed) and its tokenizer."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, BertTokenizerFast, XLMRobertaConfig,
                              XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast)

    folder.mkdir(parents=True, exist_ok=True)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                  num_labels=1, initializer_range=0.2)
    if model_type == "xlm-roberta":
        backend, vocab_size = build_unigram_tokenizer()
        fast = XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                       cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                       model_max_length=max_length)
        config = XLMRobertaConfig(vocab_size=vocab_size, max_position_embeddings=positions + 2, pad_token_id=1,
                                  bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common)
        model_class = XLMRobertaForSequenceClassification
    else:
        fast = BertTokenizerFast(tokenizer_object=build_wordpiece_tokenizer(TINY_VOCAB), unk_token="[UNK]",
                                 cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                 model_max_length=max_length)
        config = BertConfig(vocab_size=len(TINY_VOCAB), max_position_embeddings=positions, **common)
        model_class = BertForSequenceClassification
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    model_class(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def xlmr_reranker(tmp_path_factory, models_dir) -> Path:
    from export import export_model

    source = make_classifier_source(tmp_path_factory.mktemp("sources") / "tiny-xlmr-reranker", model_type="xlm-roberta")
    return export_model(str(source), out=models_dir)


@pytest.fixture(scope="session")
def bert_reranker(tmp_path_factory, models_dir) -> Path:
    from export import export_model

    source = make_classifier_source(tmp_path_factory.mktemp("sources") / "tiny-bert-reranker", model_type="bert")
    return export_model(str(source), out=models_dir)


def make_m3_source(folder: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64,
                   positions: int = 130, seed: int = 0, colbert_dim: int | None = None,
                   head_files: tuple[str, ...] = ("sparse_linear.pt", "colbert_linear.pt")) -> Path:
    """A bge-m3-style source: an XLMRobertaModel with random weights (fixed seed), the Unigram tokenizer
    above, and the two linear heads FlagEmbedding keeps beside the weights (random too)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    backend, vocab_size = build_unigram_tokenizer()
    XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                            cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                            model_max_length=positions - 2).save_pretrained(folder)
    config = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=positions,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                              initializer_range=0.2)
    torch.manual_seed(seed)
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    layers_by_file = {"sparse_linear.pt": torch.nn.Linear(hidden, 1),
                      "colbert_linear.pt": torch.nn.Linear(hidden, colbert_dim or hidden)}
    with torch.no_grad():  # about half the tokens above zero, so both of FlagEmbedding's drops are exercised
        layers_by_file["sparse_linear.pt"].bias.fill_(0.3)
    for name in head_files:
        torch.save(layers_by_file[name].state_dict(), folder / name)
    return folder


@pytest.fixture(scope="session")
def m3_source(tmp_path_factory) -> Path:
    return make_m3_source(tmp_path_factory.mktemp("sources") / "tiny-m3")


@pytest.fixture(scope="session")
def m3_model(m3_source, models_dir) -> Path:
    """The tiny bge-m3 exported through the family row (its 8,192 tokens cut to the tiny model's 128)."""
    from export import export_model

    return export_model(str(m3_source), out=models_dir, family="bge-m3", max_length=128, name="tiny-m3")
