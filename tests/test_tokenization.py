import json

import numpy as np

from bgeort.tokenization import TextTokenizer
from tests.conftest import TINY_VOCAB, build_wordpiece_tokenizer


def make_tokenizer_file(tmp_path, *, baked_length=None):
    tokenizer = build_wordpiece_tokenizer(TINY_VOCAB)
    if baked_length:
        tokenizer.enable_truncation(baked_length)
        tokenizer.enable_padding(length=baked_length)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def ids_of(words):
    return [TINY_VOCAB.index(w) for w in words]


def test_encodes_with_special_tokens_and_no_padding(tmp_path):
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path), max_length=16)
    encoded = tokenizer.encode(["the cat sat", "hello", ""])
    cls, sep = TINY_VOCAB.index("[CLS]"), TINY_VOCAB.index("[SEP]")
    assert encoded.ids[0] == [cls, *ids_of(["the", "cat", "sat"]), sep]
    assert encoded.ids[2] == [cls, sep]
    assert encoded.lengths.tolist() == [5, 3, 2]
    assert not encoded.truncated.any()


def test_baked_padding_and_truncation_in_the_file_are_ignored(tmp_path):
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path, baked_length=4), max_length=16)
    encoded = tokenizer.encode(["the man is playing guitar on the street", "hello"])
    assert encoded.lengths.tolist() == [10, 3]


def test_truncation_is_reported_with_full_counts(tmp_path):
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path), max_length=6)
    texts = ["one two three four five", "one two three four", "one"]
    encoded = tokenizer.encode(texts)
    assert encoded.lengths.tolist() == [6, 6, 3]
    assert encoded.truncated.tolist() == [True, False, False]
    assert encoded.ids[0][-1] == TINY_VOCAB.index("[SEP]")  # the end marker survives truncation
    assert tokenizer.count_tokens(texts).tolist() == [7, 6, 3]
    # a shorter per-call length
    assert tokenizer.encode(texts, max_length=4).truncated.tolist() == [True, True, False]


def test_pad_builds_int64_arrays_for_a_batch(tmp_path):
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path), max_length=16)
    encoded = tokenizer.encode(["hello", "the cat sat on the mat"])
    arrays = tokenizer.pad(encoded, np.array([1, 0]))
    assert arrays["input_ids"].shape == (2, 8) and arrays["input_ids"].dtype == np.int64
    assert arrays["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
    assert arrays["input_ids"][1, 3:].tolist() == [TINY_VOCAB.index("[PAD]")] * 5
    assert arrays["token_type_ids"].sum() == 0


def test_pad_gathers_each_row_from_the_flat_ids(tmp_path):
    """Rows of any lengths, in any order, some repeated: each padded row is the text's own ids."""
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path), max_length=16)
    texts = ["hello", "", "the cat sat on the mat", "a dog", "the man is playing guitar"]
    encoded = tokenizer.encode(texts)
    rows = np.array([4, 1, 2, 2, 0])
    arrays = tokenizer.pad(encoded, rows)
    for row, index in enumerate(rows):
        ids = tokenizer.encode([texts[index]]).ids[0]
        assert arrays["input_ids"][row].tolist() == ids + [tokenizer.pad_id] * (arrays["input_ids"].shape[1] - len(ids))
        assert arrays["attention_mask"][row].sum() == len(ids)
    assert tokenizer.pad(encoded, np.array([], dtype=np.int64))["input_ids"].shape == (0, 0)


def test_pair_encoding_has_segment_ids(tmp_path):
    tokenizer = TextTokenizer(make_tokenizer_file(tmp_path), max_length=16)
    encoded = tokenizer.encode([("the cat", "a dog")])
    assert encoded.type_ids[0] == [0, 0, 0, 0, 1, 1, 1]
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
