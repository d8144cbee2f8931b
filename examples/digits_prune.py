"""Prune LeNet-300-100 on scikit-learn's bundled digits to density 0.1.

Trains the dense model, prunes it gradually with a polynomial schedule while
fine-tuning, strips the wrappers and prints the summary and accuracies.
No download: the digits ship with scikit-learn.

Run: `python examples/digits_prune.py` (or `make demo`).
"""

import time

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_condensa as kc


def load_data():
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    return train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)


def lenet_300_100():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="lenet_300_100",
    )


def compile_classifier(model):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(density=0.1, epochs=20, fine_tune_epochs=10):
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    x_train, x_val, y_train, y_val = load_data()

    dense = compile_classifier(lenet_300_100())
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    dense_accuracy = dense.evaluate(x_val, y_val, verbose=0)[1]

    scheme = kc.Prune(
        density=density, schedule=kc.PolynomialDecay(begin_step=0.0, end_step=0.7, frequency=10)
    )
    pruned = compile_classifier(scheme.apply(dense))
    pruned.fit(
        x_train, y_train, epochs=fine_tune_epochs, batch_size=32, verbose=0,
        callbacks=kc.callbacks(scheme),
    )
    final = compile_classifier(kc.strip(pruned))
    pruned_accuracy = final.evaluate(x_val, y_val, verbose=0)[1]

    summary = kc.summary(final)
    print()
    print(f"backend:            {keras.backend.backend()}")
    print(f"dense accuracy:     {dense_accuracy:.4f}")
    print(f"pruned accuracy:    {pruned_accuracy:.4f}  (density {summary.density:.3f}, "
          f"{summary.nonzeros:,} of {summary.params:,} weights nonzero)")
    print(f"time:               {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
