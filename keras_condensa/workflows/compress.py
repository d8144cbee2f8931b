"""The compress workflow: apply a scheme, fine-tune, strip (and shrink), measure, save."""

import dataclasses

import keras

from keras_condensa import Summary, codec
from keras_condensa import summary as model_summary
from keras_condensa.files import save_model_atomically
from keras_condensa.workflows.fine_tune import fine_tune, outputs_logits
from keras_condensa.workflows.measure import model_accuracy


@dataclasses.dataclass
class Compressed:
    """What `compress` returns.

    Attributes:
        model: the stripped, fine-tuned compressed model.
        dense_accuracy: the dense model's validation accuracy.
        accuracy: the compressed model's validation accuracy.
        summary: its `kc.summary`.
        summary_text: the summary's printed table.
        epochs_run: fine-tuning epochs run.
    """

    model: keras.Model
    dense_accuracy: float
    accuracy: float
    summary: Summary
    summary_text: str
    epochs_run: int


def compress(
    model,
    scheme,
    data,
    *,
    method="mask",
    epochs=1,
    options=None,
    batch_size=32,
    shrink=False,
    seed=None,
    out=None,
    recalibrate=True,
):
    """Compresses `model` with `scheme`, fine-tunes it on `data` and measures it.

    Args:
        model: the trained dense `keras.Model` (not modified).
        scheme: a `kc` operator or `kc.Compose`.
        data: dict with `x_train`, `y_train`, `x_val`, `y_val` (the layout of a
            `--data` `.npz`).
        method: `"mask"`, `"lc"` or `"distill"` (see `fine_tune`).
        epochs: fine-tuning epochs (0: one-shot).
        options: keyword arguments of `kc.LC` or `kc.distill`.
        batch_size: training batch size.
        shrink: remove the channels structured pruning zeroed (`kc.shrink`).
        seed: optional seed of the fine-tuning.
        out: optional path the result is saved to (atomically): a `.keras`
            model, or a `.kcz` file (`kc.codec.save`: entropy-coded weights).
        recalibrate: re-estimate BatchNorm statistics on `x_train` (see
            `fine_tune`; off for synthetic inputs).

    Returns:
        A `Compressed`.

    Raises:
        SchemeError: the scheme does not apply, the method cannot run it, or
            the model cannot be shrunk.
        FloatingPointError: the fine-tuning diverged.

    Example:

    ```python
    result = compress(model, kc.Prune(density=0.2), data, epochs=2, out="small.keras")
    result.dense_accuracy, result.accuracy, result.summary.density
    ```
    """
    before = model_accuracy(model, data["x_val"], data["y_val"])
    tuned = fine_tune(
        model,
        scheme,
        data["x_train"],
        data["y_train"],
        method=method,
        epochs=epochs,
        options=options,
        batch_size=batch_size,
        shrink=shrink,
        seed=seed,
        from_logits=outputs_logits(model, data["x_val"]),
        recalibrate=recalibrate,
    )
    lines = []
    stats = model_summary(tuned.model, print_fn=lines.append, coded=True)
    if out is not None and str(out).lower().endswith(".kcz"):
        codec.save(tuned.model, out)
    elif out is not None:
        save_model_atomically(tuned.model, out)
    return Compressed(
        model=tuned.model,
        dense_accuracy=before,
        accuracy=model_accuracy(tuned.model, data["x_val"], data["y_val"]),
        summary=stats,
        summary_text="\n".join(lines),
        epochs_run=tuned.epochs_run,
    )
