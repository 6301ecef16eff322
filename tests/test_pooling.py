import numpy as np
import pytest

from bgeort.pooling import cls_pool, l2_normalize, mean_pool, pool

HIDDEN = np.array(
    [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
     [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]], dtype=np.float32)
MASK = np.array([[1, 1, 0], [1, 1, 1]])


def test_cls_pool_takes_first_token():
    np.testing.assert_array_equal(cls_pool(HIDDEN, MASK), [[1.0, 2.0], [0.0, 1.0]])


def test_mean_pool_ignores_padding():
    # row 0: mean of the two real tokens; the padded [100, 100] must not count
    np.testing.assert_allclose(mean_pool(HIDDEN, MASK), [[2.0, 3.0], [2.0, 3.0]])


def test_pool_dispatch_and_unknown():
    np.testing.assert_array_equal(pool(HIDDEN, MASK, "cls"), cls_pool(HIDDEN, MASK))
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(HIDDEN, MASK, "max")


def test_l2_normalize_unit_rows_and_zero_row():
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
