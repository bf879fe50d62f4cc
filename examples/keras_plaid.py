"""Masking -> LSTM -> Dense on UEA PLAID, with maskrnn.keras.LSTM and with keras.layers.LSTM.

PLAID (Plug Load Appliance Identification Dataset): the current drawn by 11 kinds of household appliance
(air conditioner, fan, fridge, hair dryer, heater, laptop, ...), 537 training and 537 test series of 100 to
1,344 samples. sktime ships the data inside its wheel (``pip install ".[examples]"``; nothing is downloaded).
Lengths vary more than tenfold, so in a padded batch most steps are padding: Keras's own layer runs every
step of every row, maskrnn's kernels skip rows past their last real step.

Each series is standardised by its own mean and standard deviation and cut into frames of ``--frame``
consecutive samples (8 by default; an incomplete last frame is dropped), one frame per LSTM step with the
samples as features, plus one feature holding the log of the series' standard deviation (its amplitude, which
the per-series scaling removes): 12 to 168 steps of 9 channels, every sample kept (an LSTM learns these
waveforms poorly one sample per step). The features are then standardised with the training set's statistics,
post-padded with zero frames and masked with Masking.

    python examples/keras_plaid.py                   # both layers, 30 epochs, torch backend
    python examples/keras_plaid.py --layer maskrnn --epochs 5

Prints, for each layer, the test accuracy and the median time per epoch (the first epoch, which includes
warm-up, is left out).
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras_japanese_vowels import LAYERS, compare  # noqa: E402


def features(series, frame):
    """(L,) -> (L // frame, frame + 1): the standardised samples side by side, and the log amplitude."""
    n = len(series) // frame
    std = series.std() + 1e-6
    samples = ((series[: n * frame] - series.mean()) / std).reshape(n, frame)
    return np.concatenate([samples, np.full((n, 1), np.log(std))], axis=1)


def load(frame=8):
    """(x_train, y_train, x_test, y_test): x (N, T, frame + 1) float32 post-padded with zeros, y int labels
    0..10."""
    from sktime.datasets import load_plaid

    splits = [load_plaid(split=s, return_X_y=True) for s in ("train", "test")]
    series = [[features(row.iloc[0].to_numpy(), frame) for _, row in table.iterrows()] for table, _ in splits]
    real = np.concatenate(series[0])
    mean, std = real.mean(axis=0), real.std(axis=0)  # training statistics only
    maxlen = max(len(s) for part in series for s in part)
    xs = [keras.utils.pad_sequences([(s - mean) / std for s in part], maxlen=maxlen, dtype="float32",
                                    padding="post", value=0.0) for part in series]
    ys = [np.asarray(labels).astype(int) for _, labels in splits]
    return xs[0], ys[0], xs[1], ys[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=["both", *LAYERS], default="both")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--frame", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load(args.frame)
    padding = float(np.mean(np.all(data[0] == 0, axis=-1)))
    print(f"PLAID: {len(data[0])} train, {len(data[2])} test series, padded to {data[0].shape[1]} steps "
          f"({padding:.0%} of the training steps are padding); Keras backend {keras.backend.backend()}")
    return compare(data, args)


if __name__ == "__main__":
    main()
