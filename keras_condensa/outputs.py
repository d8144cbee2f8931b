"""What a classifier's outputs say: probabilities or logits, and the class they pick."""

import numpy as np


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


def predicted_classes(outputs):
    """The class each sample's outputs pick, as int32: the argmax, or for one unit 0/1.

    One unit is a sigmoid probability (threshold 0.5) or, when outside
    [0, 1], a logit (threshold 0).

    Example:

    >>> predicted_classes(np.array([[0.1, 0.9], [2.0, -1.0]])).tolist()
    [1, 0]
    >>> predicted_classes(np.array([[-0.3], [1.5]])).tolist()
    [0, 1]
    """
    outputs = np.asarray(outputs)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return outputs.argmax(axis=-1).astype("int32")
    scores = outputs.reshape(len(outputs))
    threshold = 0.5 if looks_like_probabilities(scores) else 0.0
    return (scores > threshold).astype("int32")
