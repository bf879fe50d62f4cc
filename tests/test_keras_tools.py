"""The Keras examples (JapaneseVowels and PLAID, when sktime is installed) and the bench's Keras training rows,
briefly."""

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("keras")


def _example(name):
    """The module examples/<name>.py (the examples import each other, as they do when run as scripts)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.mark.slow
def test_japanese_vowels_example_learns():
    pytest.importorskip("sktime")
    example = _example("keras_japanese_vowels")
    x_train, y_train, x_test, y_test = example.load()
    assert x_train.shape == (270, 29, 12) and x_test.shape == (370, 29, 12)
    assert sorted(set(y_train)) == list(range(9)) and sorted(set(y_test)) == list(range(9))
    lengths = (np.abs(x_test).sum(axis=-1) != 0).sum(axis=1)  # post-padded: the real frames come first
    assert lengths.min() == 7 and lengths.max() == 29
    result = example.main(["--layer", "maskrnn", "--epochs", "6"])["maskrnn"]
    assert result["accuracy"] > 0.6  # chance is 1/9; the full 40 epochs reach >= 0.95
    assert result["seconds_per_epoch"] > 0


@pytest.mark.slow
def test_plaid_example_learns():
    pytest.importorskip("sktime")
    example = _example("keras_plaid")
    x_train, y_train, x_test, y_test = example.load(frame=8)
    assert x_train.shape == (537, 168, 9) and x_test.shape[0] == 537 and x_test.shape[2] == 9
    assert sorted(set(y_train)) == list(range(11)) and sorted(set(y_test)) == list(range(11))
    lengths = np.any(x_train != 0, axis=-1).sum(axis=1)  # post-padded: the real frames come first
    assert lengths.min() == 12 and lengths.max() == 168  # 100 and 1,344 samples, 8 to a frame
    assert np.mean(lengths) < 0.3 * x_train.shape[1]  # padding is most of the batch
    # A short run: frames of 64 samples (2 to 21 steps), a few epochs.
    result = example.main(["--layer", "maskrnn", "--epochs", "4", "--frame", "64"])["maskrnn"]
    majority = np.bincount(y_test).max() / len(y_test)
    assert result["accuracy"] > majority  # better than always naming the commonest class
    assert result["seconds_per_epoch"] > 0
