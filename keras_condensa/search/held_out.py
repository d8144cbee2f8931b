"""The held-out check of a search: does the returned model meet the floor on data it never saw?

The search picks its answer on the validation data, so its validation
accuracy is biased upwards (it was the selection criterion). The test data
(`CompressionTuner(..., test_data=(x, y))`) judges the answer afresh: the
returned model's test accuracy against the floor carried over to the test
data (the dense model's test accuracy minus `max_accuracy_drop` for a
relative floor, the absolute `accuracy_floor` itself otherwise).
"""

from keras_condensa.workflows.measure import model_accuracy


def check(tuner):
    """Evaluates a finished search's returned model on the tuner's test data.

    Args:
        tuner: a `CompressionTuner` built with `test_data`, after `search()`.

    Returns:
        None without test data; else a dict: `trial` (the returned trial's
        id), `test_accuracy` (of `tuner.best_model()`),
        `dense_test_accuracy`, `test_floor`, `floor_kind` (`"relative"` or
        `"absolute"`), `max_accuracy_drop` (None for an absolute floor) and
        `holds` (whether `test_accuracy >= test_floor`).

    Raises:
        RuntimeError: no trial completed.
    """
    if tuner.x_test is None:
        return None
    trial = tuner.best_trial()
    batch = tuner.batch_size
    test_accuracy = model_accuracy(tuner.load_model(trial), tuner.x_test, tuner.y_test, batch)
    dense = model_accuracy(tuner.model, tuner.x_test, tuner.y_test, batch)
    drop = tuner.max_accuracy_drop
    test_floor = tuner.accuracy_floor if drop is None else dense - drop
    return {
        "trial": trial.trial_id,
        "test_accuracy": float(test_accuracy),
        "dense_test_accuracy": float(dense),
        "test_floor": float(test_floor),
        "floor_kind": "absolute" if drop is None else "relative",
        "max_accuracy_drop": drop,
        "holds": bool(test_accuracy >= test_floor),
    }
