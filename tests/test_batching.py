import numpy as np
import pytest

from bgeort.batching import plan_batches


@pytest.mark.parametrize(
    "lengths, batch_size, max_tokens, expected",
    [
        ([], 4, None, []),
        ([5], 4, None, [[0]]),
        ([3, 9, 5, 7], 2, None, [[1, 3], [2, 0]]),  # longest first
        ([4, 4, 4, 4, 4], 2, None, [[0, 1], [2, 3], [4]]),  # ties keep input order
        ([10, 10, 10, 2, 2, 2], 8, 20, [[0, 1], [2, 3], [4, 5]]),  # budget 20 = 2 rows of 10
        ([50, 1], 8, 20, [[0], [1]]),  # a text over the budget still gets a batch
    ],
)
def test_plan_batches_table(lengths, batch_size, max_tokens, expected):
    batches = plan_batches(lengths, batch_size=batch_size, max_tokens=max_tokens)
    assert [b.tolist() for b in batches] == expected


def test_plan_batches_covers_every_index_once_within_limits():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 512, size=1000)
    batches = plan_batches(lengths, batch_size=32, max_tokens=4096)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 4096
    # sorted: the padded waste is small compared to random order
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.1 * lengths.sum()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 4, "max_tokens": 0}])
def test_plan_batches_rejects_bad_limits(kwargs):
    with pytest.raises(ValueError):
        plan_batches([1, 2], **kwargs)


def test_device_defaults():
    from bgeort.batching import batch_defaults

    size, tokens = batch_defaults("cpu")
    assert (size, tokens) == (32, 128)  # measured in bgeort/batching.py
    # a text past the budget runs alone, unpadded; short ones still share a batch
    assert [len(b) for b in plan_batches([300, 290, 12, 11, 10], batch_size=size, max_tokens=tokens)] == [1, 1, 3]
    size, tokens = batch_defaults("cuda:1")
    assert size > 32 and tokens >= size * 64


def test_a_batch_ends_where_lengths_jump():
    batches = plan_batches([100, 90, 60, 58, 10, 9], batch_size=8)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4, 5]]


def test_long_tailed_corpus_pads_little():
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(mean=3.5, sigma=1.0, size=5000).astype(int), 3, 512)
    batches = plan_batches(lengths, batch_size=32)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded <= 1.15 * lengths.sum()
    assert np.mean([len(b) for b in batches]) >= 16  # and batches stay large


def test_max_attention_bounds_rows_times_the_longest_squared():
    """Long inputs: the attention scores grow with S^2, so 8,192-token texts go two to a batch under
    the CUDA budget while 512-token ones still fill their batches."""
    from bgeort.batching import attention_budget

    budget = attention_budget("cuda:0")
    batches = plan_batches([8192] * 5 + [512] * 600, batch_size=1024, max_tokens=65536, max_attention=budget)
    sizes = [len(b) for b in batches]
    assert sizes[:3] == [2, 2, 1] and sizes[3] == 128  # 65,536 tokens / 512 = 128 < 2^27 / 512^2 = 512
    assert sum(sizes) == 605 and attention_budget("cpu") is None
    with pytest.raises(ValueError, match="max_attention"):
        plan_batches([1], batch_size=1, max_attention=0)
