"""The one metrics helper: predictions, top-1 accuracy, logits detection, finite weights.

The command line, the demo and the tuner measure a model the same way:
accuracy from predictions (so the model need not be compiled with an
accuracy metric), against integer labels or one-hot rows.
"""

import numpy as np

from keras_condensa.outputs import predicted_classes


def predict(model, x, batch_size=256):
    """`model.predict(x)` as a NumPy array, quietly, in batches of at least 256."""
    return np.asarray(model.predict(x, batch_size=max(int(batch_size), 256), verbose=0))


def accuracy(outputs, labels):
    """Top-1 accuracy of `outputs` against integer labels or one-hot rows.

    One output unit is read as a sigmoid probability (threshold 0.5) or,
    when outside [0, 1], a logit (threshold 0).

    Args:
        outputs: model outputs, `(n, classes)` or `(n,)`/`(n, 1)`.
        labels: integer labels or one-hot rows.

    Returns:
        A float in [0, 1].

    Example:

    >>> accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
    0.5
    """
    return float(np.mean(correct(outputs, labels)))


def correct(outputs, labels):
    """Which samples `outputs` classify right (see `accuracy`).

    Args:
        outputs: model outputs, `(n, classes)` or `(n,)`/`(n, 1)`.
        labels: integer labels or one-hot rows.

    Returns:
        An `(n,)` bool array.
    """
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    predicted = predicted_classes(outputs)
    one_hot = labels.ndim == outputs.ndim >= 2 and labels.shape[-1] == outputs.shape[-1] > 1
    if one_hot:
        labels = labels.argmax(axis=-1)
    return predicted == labels.reshape(predicted.shape)


def accuracy_error(right, reference=None):
    """The standard error of an accuracy measured on a finite set of samples.

    Alone, the binomial error `sqrt(a (1 - a) / n)`. Against `reference`, the
    same samples classified by another model (the dense one, when a floor is
    its accuracy minus a drop), the error of the *difference* of the two
    accuracies (McNemar's paired error): it counts only the samples the two
    models disagree on, which is what decides whether a floor relative to the
    reference holds beyond these samples.

    Args:
        right: `(n,)` bool, the samples a model classifies right (`correct`).
        reference: optional `(n,)` bool, another model's on the same samples.

    Returns:
        A float.

    Example:

    >>> right = np.array([True] * 90 + [False] * 10)
    >>> round(accuracy_error(right), 3)
    0.03
    >>> round(accuracy_error(right, reference=np.roll(right, 1)), 3)
    0.014
    """
    right = np.asarray(right, dtype=bool)
    n = max(len(right), 1)
    if reference is None:
        a = float(np.mean(right)) if len(right) else 0.0
        return float(np.sqrt(a * (1.0 - a) / n))
    reference = np.asarray(reference, dtype=bool)
    gained = float(np.sum(right & ~reference))
    lost = float(np.sum(~right & reference))
    return float(np.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n)


def model_accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of `model` on `(x, y)` (see `accuracy`)."""
    return accuracy(predict(model, x, batch_size), y)


def check_finite_weights(model):
    """Raises rather than let a model with NaN or infinite weights be used or written.

    Raises:
        FloatingPointError: naming the first non-finite weight.
    """
    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight))):
            raise FloatingPointError(
                f"the compressed model's weight {weight.path} holds NaN or infinite values; "
                "lower the learning rate or check the data"
            )


def layer_rows(summary):
    """The per-layer rows of a `kc.summary` as plain dicts (for JSON and reports)."""
    return [
        {
            "name": row.name,
            "class_name": row.class_name,
            "params": int(row.params),
            "nonzeros": int(row.nonzeros),
            "density": float(row.density),
        }
        for row in summary.rows
    ]
