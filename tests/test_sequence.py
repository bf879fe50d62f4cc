"""pad_sequences: Keras 3.15's reference outputs and errors (keras-masking-spec.md section 1)."""

import numpy as np
import pytest

from maskrnn import pad_sequences

SEQS = [[1], [2, 3], [4, 5, 6]]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, [[0, 0, 1], [0, 2, 3], [4, 5, 6]]),
    ({"padding": "post"}, [[1, 0, 0], [2, 3, 0], [4, 5, 6]]),
    ({"maxlen": 2}, [[0, 1], [2, 3], [5, 6]]),
    ({"maxlen": 2, "truncating": "post"}, [[0, 1], [2, 3], [4, 5]]),
    ({"maxlen": 5, "value": -1, "padding": "post"}, [[1, -1, -1, -1, -1], [2, 3, -1, -1, -1], [4, 5, 6, -1, -1]]),
])
def test_reference_outputs(kwargs, expected):
    out = pad_sequences(SEQS, **kwargs)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


def test_edge_cases():
    np.testing.assert_array_equal(pad_sequences([[], [1, 2]]), [[0, 0], [1, 2]])
    assert pad_sequences([[], []]).shape == (2, 0)
    np.testing.assert_array_equal(pad_sequences([[1.5, 2.5], [3.7]]), [[1, 2], [0, 3]])
    out = pad_sequences([[[1, 2], [3, 4]], [[5, 6]]], dtype="float32")
    assert out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[1], [[0, 0], [5, 6]])
    out = pad_sequences([["a", "b"], ["c"]], value="x", dtype=object)
    assert out.tolist() == [["a", "b"], ["x", "c"]]


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((x for x in [[1]]), {}, "`sequences` must be iterable."),
    ([[1], None], {}, "must be a list of iterables"),
    ([[1, 2]], {"padding": "middle"}, 'Padding type "middle" not understood'),
    ([[1, 2]], {"truncating": "middle"}, 'Truncating type "middle" not understood'),
    ([["a"]], {"value": "x"}, "is not compatible with `value`'s type"),
    ([[[1, 2]], [[1, 2, 3]]], {}, "is different from expected shape"),
])
def test_errors(args, kwargs, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        pad_sequences(args, **kwargs)
