"""Masking -> LSTM -> Dense on UEA JapaneseVowels, with maskrnn.keras.LSTM and with keras.layers.LSTM.

JapaneseVowels: nine speakers saying "ae", 12 LPC cepstrum coefficients per frame, 270 training and 370 test
series of 7 to 29 frames. sktime ships the data inside its wheel (``pip install ".[examples]"``; nothing is
downloaded). The series are standardised per channel, post-padded with zeros and masked with Masking, so each
row's LSTM state is the one after its last real frame.

    python examples/keras_japanese_vowels.py                   # both layers, 40 epochs, torch backend
    python examples/keras_japanese_vowels.py --layer maskrnn --epochs 5

Prints, for each layer, the test accuracy and the median time per epoch (the first epoch, which includes
warm-up, is left out).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import maskrnn.keras  # noqa: E402

LAYERS = {"maskrnn": maskrnn.keras.LSTM, "keras": keras.layers.LSTM}


def load():
    """(x_train, y_train, x_test, y_test): x (N, 29, 12) float32 post-padded with zeros, y int labels 0..8."""
    from sktime.datasets import load_japanese_vowels

    splits = [load_japanese_vowels(split=s, return_X_y=True) for s in ("train", "test")]
    series = [[np.stack([row[c].to_numpy() for c in frame.columns], axis=1) for _, row in frame.iterrows()]
              for frame, _ in splits]
    real = np.concatenate(series[0])
    mean, std = real.mean(axis=0), real.std(axis=0)  # training statistics only
    maxlen = max(len(s) for part in series for s in part)
    xs = [keras.utils.pad_sequences([(s - mean) / std for s in part], maxlen=maxlen, dtype="float32",
                                    padding="post", value=0.0) for part in series]
    ys = [np.asarray(labels).astype(int) - 1 for _, labels in splits]
    return xs[0], ys[0], xs[1], ys[1]


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def train(layer_cls, data, epochs, units, seed):
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((None, x_train.shape[2])), keras.layers.Masking(mask_value=0.0),
                              layer_cls(units), keras.layers.Dense(int(y_train.max()) + 1)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, callbacks=[timer])
    _, accuracy = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    per_epoch = float(np.median(timer.times[1:] if len(timer.times) > 1 else timer.times))
    return dict(accuracy=float(accuracy), seconds_per_epoch=per_epoch)


def compare(data, args):
    """Trains each layer args.layer names ("both": every one) and prints its accuracy and time per epoch."""
    results = {}
    for name in LAYERS if args.layer == "both" else [args.layer]:
        results[name] = train(LAYERS[name], data, args.epochs, args.units, args.seed)
        print(f"{name:8s} test accuracy {results[name]['accuracy']:.3f}, "
              f"{results[name]['seconds_per_epoch']:.3f} s per epoch")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=["both", *LAYERS], default="both")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load()
    print(f"JapaneseVowels: {len(data[0])} train, {len(data[2])} test series, padded to {data[0].shape[1]} "
          f"frames; Keras backend {keras.backend.backend()}")
    return compare(data, args)


if __name__ == "__main__":
    main()
