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


def _random_long_texts(words, n, seed=0):
    """Texts far past the limit with the awkward parts: runs of spaces, newlines, tabs, punctuation,
    accents, CJK, a control character, one long unbroken run, and some that stay short."""
    rng = np.random.default_rng(seed)
    extras = ["  ", "\n", "\t", " ,", ".", "Café", "naïve", "日本語", "\x1c", "don't", "x" * 300, "!?"]
    texts = []
    for _ in range(n):
        pieces = rng.choice(words + extras, size=int(rng.integers(5, 400)))
        texts.append(" ".join(pieces) if rng.random() < 0.7 else "".join(pieces))
    return texts


def _same_encoding(tokenizer, texts, length):
    fast = tokenizer.encode(texts, max_length=length)
    tokenizer._prefixes = False  # every text read whole
    whole = tokenizer.encode(texts, max_length=length)
    tokenizer._prefixes = True
    np.testing.assert_array_equal(fast.flat_ids, whole.flat_ids)
    np.testing.assert_array_equal(fast.flat_type_ids, whole.flat_type_ids)
    np.testing.assert_array_equal(fast.lengths, whole.lengths)
    np.testing.assert_array_equal(fast.truncated, whole.truncated)
    return fast


def test_texts_far_past_the_limit_are_tokenized_from_a_prefix_with_the_same_result(tmp_path, monkeypatch):
    import bgeort.tokenization as module
    from tests.conftest import MINILM, UNIGRAM_PIECES, build_unigram_tokenizer

    wordpiece = TextTokenizer(make_tokenizer_file(tmp_path), max_length=16)
    unigram_file = tmp_path / "unigram.json"
    build_unigram_tokenizer()[0].save(str(unigram_file))
    unigram = TextTokenizer(unigram_file, max_length=16)
    assert wordpiece._prefixes and unigram._prefixes
    read = []
    original = module._prefix
    monkeypatch.setattr(module, "_prefix", lambda text, limit: read.append(text) or original(text, limit))
    for tokenizer, words in ((wordpiece, TINY_VOCAB[5:]), (unigram, list(UNIGRAM_PIECES))):
        for length in (5, 16):
            encoded = _same_encoding(tokenizer, _random_long_texts(words, 300, seed=length), length)
            assert encoded.truncated.sum() > 100
    assert len(read) > 500  # the prefix path did run
    if MINILM.is_dir():  # the real uncased WordPiece vocabulary
        real = TextTokenizer(MINILM / "tokenizer.json", max_length=512)
        vocab = [w for w in json.loads((MINILM / "tokenizer.json").read_text())["model"]["vocab"] if w.isalpha()][:5000]
        _same_encoding(real, _random_long_texts(vocab, 200, seed=1), 512)
        _same_encoding(real, _random_long_texts(vocab, 200, seed=2), 64)


def test_a_tokenizer_that_does_not_split_at_whitespace_reads_texts_whole(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    assert not TextTokenizer(path, max_length=8)._prefixes
