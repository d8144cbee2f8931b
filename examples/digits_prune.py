"""Prune LeNet-300-100 on scikit-learn's bundled digits to density 0.1.

Trains the dense model, prunes it gradually with a polynomial schedule while
fine-tuning, strips the wrappers and prints the summary and accuracies.
No download: the digits ship with scikit-learn.

Run: `python examples/digits_prune.py` (`make demo` runs the full search: `keras-condensa demo`).
"""

import time

import keras

import keras_condensa as kc
from keras_condensa.demo import lenet_300_100, load_data


def compile_classifier(model):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main(density=0.1, epochs=20, fine_tune_epochs=10):
    start = time.perf_counter()
    data = load_data()
    x_train, y_train, x_val, y_val = (data[k] for k in ("x_train", "y_train", "x_val", "y_val"))

    dense = compile_classifier(lenet_300_100(seed=0))
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
