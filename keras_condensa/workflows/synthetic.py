"""The data of a data-free compression: inputs synthesized from the model, labelled by it.

`compress` and `search` (and `CompressionTuner(data_free=...)`) take the
layout of a `--data` `.npz`; `synthetic_data` fills it from the dense model
alone (`kc.data_free.synthesize`), keeping any real arrays the user has.
"""

from keras_condensa import data_free
from keras_condensa.outputs import predicted_classes
from keras_condensa.workflows.measure import predict

#: Synthetic inputs the validation set gets when the user has none.
VALIDATION_SAMPLES = 256


def synthesis_options(data_free_option):
    """The `kc.data_free.synthesize` keyword arguments a `data_free=` value asks for.

    Args:
        data_free_option: `True` (the defaults), a method name (`"batchnorm"`,
            `"inception"`, `"batchnorm+inception"`, `"auto"`) or a dict of
            `synthesize` keyword arguments.

    Returns:
        A dict.

    Raises:
        ValueError: anything else, or a dict with `return_labels`.
    """
    if data_free_option is True:
        return {}
    if isinstance(data_free_option, str):
        return {"method": data_free_option}
    if isinstance(data_free_option, dict) and "return_labels" not in data_free_option:
        return dict(data_free_option)
    raise ValueError(
        "data_free takes True, a kc.data_free.synthesize method name (e.g. 'batchnorm', "
        "'inception', 'auto') or a dict of synthesize's keyword arguments (not return_labels). "
        f"Received: data_free={data_free_option!r}"
    )


def synthetic_data(model, data=None, options=None, seed=0):
    """Training inputs synthesized from `model`, labelled by its predictions.

    `x_train` comes from `kc.data_free.synthesize(model, seed=seed, **options)`
    and `y_train` is the class the dense model predicts for each input, so
    mask fine-tuning learns the dense model's decisions and `"distill"` its
    soft targets on top. Real `x_val`/`y_val` (and `x_test`/`y_test`) in
    `data` are kept: the accuracy floor is then measured on real labels, and
    the synthetic inputs are kept within the range of `x_val` (unless
    `options` give an `input_range`). Without them, `VALIDATION_SAMPLES` more
    inputs are synthesized (another seed) and labelled the same way: accuracy
    is then agreement with the dense model.

    Args:
        model: the trained dense model.
        data: optional dict in the `--data` layout; its `x_train`/`y_train`
            are not used.
        options: keyword arguments of `kc.data_free.synthesize` (not
            `return_labels`).
        seed: the synthesis seed of the training inputs (validation: `seed + 1`).

    Returns:
        A dict with `x_train`, `y_train`, `x_val`, `y_val` (and the test
        arrays of `data`).

    Raises:
        ValueError: see `kc.data_free.synthesize` (e.g. no BatchNorm layer
            for `method="batchnorm"`).
    """
    options = dict(options or {})
    data = data or {}
    if "x_val" in data and "input_range" not in options:
        low, high = float(data["x_val"].min()), float(data["x_val"].max())
        if low < high:  # Synthetic inputs stay in the range real ones span.
            options["input_range"] = (low, high)
    result = _labelled(model, seed, options)
    if "x_val" in data and "y_val" in data:
        result.update(x_val=data["x_val"], y_val=data["y_val"])
    else:
        validation = _labelled(model, seed + 1, {**options, "n": VALIDATION_SAMPLES})
        result.update(x_val=validation["x_train"], y_val=validation["y_train"])
    for key in ("x_test", "y_test"):
        if key in data:
            result[key] = data[key]
    return result


def synthetic_splits(model, validation_data, data_free_option, seed=None):
    """`(train_data, validation_data)` of a data-free search (`CompressionTuner(data_free=)`).

    Args:
        model: the trained dense model.
        validation_data: the user's `(x, y)`, or `None` (then synthetic too).
        data_free_option: see `synthesis_options`.
        seed: the synthesis seed (`None`: 0, so that a resumed search
            synthesizes the same data).

    Returns:
        Two `(x, y)` tuples.
    """
    data = {}
    if validation_data is not None:
        data["x_val"], data["y_val"] = validation_data
    data = synthetic_data(model, data, synthesis_options(data_free_option), seed or 0)
    return (data["x_train"], data["y_train"]), (data["x_val"], data["y_val"])


def _labelled(model, seed, options):
    x = data_free.synthesize(model, seed=seed, **options)
    return {"x_train": x, "y_train": predicted_classes(predict(model, x))}
