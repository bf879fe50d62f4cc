"""The Keras example (JapaneseVowels, when sktime is installed) and the bench's Keras training rows, briefly."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("keras")


@pytest.mark.slow
def test_japanese_vowels_example_learns():
    pytest.importorskip("sktime")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import keras_japanese_vowels as example
    finally:
        sys.path.pop(0)
    x_train, y_train, x_test, y_test = example.load()
    assert x_train.shape == (270, 29, 12) and x_test.shape == (370, 29, 12)
    assert sorted(set(y_train)) == list(range(9)) and sorted(set(y_test)) == list(range(9))
    lengths = (np.abs(x_test).sum(axis=-1) != 0).sum(axis=1)  # post-padded: the real frames come first
    assert lengths.min() == 7 and lengths.max() == 29
    result = example.main(["--layer", "maskrnn", "--epochs", "6"])["maskrnn"]
    assert result["accuracy"] > 0.6  # chance is 1/9; the full 40 epochs reach >= 0.95
    assert result["seconds_per_epoch"] > 0


def test_bench_keras_training_rows():
    from maskrnn import bench_keras

    skipped = []
    rows = bench_keras.stack_rows([(4, 8, 8, 8)], 1, skipped)
    assert not skipped
    assert [(r["mask"], r["impl"]) for r in rows] == [(m, i) for m in ("post", "holes") for i in bench_keras.IMPLS]
    assert all(r["pass_"] == "train_on_batch" and r["median_ms"] > 0 for r in rows)
    assert all(r["ratio"] > 0 for r in rows if r["impl"] == "keras")
