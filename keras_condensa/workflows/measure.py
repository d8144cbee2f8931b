"""The one metrics helper: predictions, top-1 accuracy, logits detection, finite weights.

The command line, the demo and the tuner measure a model the same way:
accuracy from predictions (so the model need not be compiled with an
accuracy metric), against integer labels or one-hot rows.
"""

import numpy as np


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
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        predicted = outputs.argmax(axis=-1)
        if labels.ndim == outputs.ndim and labels.shape[-1] == outputs.shape[-1]:
            labels = labels.argmax(axis=-1)
    else:
        scores = outputs.reshape(len(outputs))
        threshold = 0.5 if np.all((scores >= 0) & (scores <= 1)) else 0.0
        predicted = (scores > threshold).astype(int)
    return float(np.mean(predicted == labels.reshape(predicted.shape)))


def model_accuracy(model, x, y, batch_size=256):
    """Top-1 accuracy of `model` on `(x, y)` (see `accuracy`)."""
    return accuracy(predict(model, x, batch_size), y)


def looks_like_probabilities(outputs):
    """Whether outputs are probabilities: rows in [0, 1] summing to 1 (one unit: in [0, 1]).

    Example:

    >>> looks_like_probabilities(np.array([[0.25, 0.75]]))
    True
    >>> looks_like_probabilities(np.array([[-2.0, 3.0]]))
    False
    """
    outputs = np.asarray(outputs, dtype="float64")
    if outputs.ndim < 2 or outputs.shape[-1] < 2:
        return bool(np.all((outputs >= 0) & (outputs <= 1)))
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


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
