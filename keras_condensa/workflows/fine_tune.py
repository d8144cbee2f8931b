"""The one fine-tune dispatch: mask fine-tuning, Condensa's L-C, or distillation.

`fine_tune` takes a dense model and a scheme and returns the stripped,
fine-tuned compressed model. The command line's `compress`, every trial of
`CompressionTuner` and the demo go through it, so they share the same
optimizer copy, the finite-loss check and (given a floor) the early stop.
"""

import dataclasses
import math
import numbers

import keras

# The public API (the names are a contract), not the modules that hold it today.
from keras_condensa import LC, distill, strip
from keras_condensa import callbacks as scheme_callbacks
from keras_condensa import shrink as shrink_model
from keras_condensa.compiling import check_finite_losses
from keras_condensa.lc import check_options as check_lc_options
from keras_condensa.outputs import looks_like_probabilities
from keras_condensa.recalibrate import recalibrate_batchnorm
from keras_condensa.workflows.measure import (
    check_finite_weights,
    model_accuracy,
    predict,
)

#: How a compressed model recovers accuracy, and the options each method takes.
METHODS = ("mask", "lc", "distill")
OPTIONS = {
    "mask": (),
    "lc": ("steps", "mu_init", "mu_multiplier", "mu_cap", "lr_end"),
    "distill": ("temperature", "alpha"),
}


class SchemeError(ValueError):
    """The scheme cannot be applied, fine-tuned this way, or stripped (shrunk) on this model."""


@dataclasses.dataclass
class FineTuned:
    """What `fine_tune` returns.

    Attributes:
        model: the stripped (plain Keras), fine-tuned compressed model.
        epochs_run: epochs of training actually run (fewer after an early stop).
    """

    model: keras.Model
    epochs_run: int


def check_method(method, options=None):
    """Checks a fine-tuning method and its options before any work.

    Args:
        method: one of `METHODS`.
        options: optional dict of keyword arguments of `kc.LC` or `kc.distill`.

    Returns:
        The options as a new dict.

    Raises:
        ValueError: an unknown method, options the method does not take, or
            L-C numbers `kc.LC` refuses.
    """
    if method not in METHODS:
        raise ValueError(
            f"`fine_tune` must be one of {METHODS}. Received: fine_tune={method!r}. "
            "Use 'mask' to fine-tune with the masks, 'lc' for Condensa's L-C optimizer, "
            "'distill' to learn from the dense model's soft targets."
        )
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS[method]))
    if unknown:
        raise ValueError(
            f"`fine_tune_options` for fine_tune={method!r} takes {list(OPTIONS[method])}. "
            f"Received unknown keys: {unknown}."
        )
    if method == "lc":
        check_lc_options(**options)
    return options


def is_compiled(model):
    """Whether `model` was compiled with an optimizer and a loss."""
    return getattr(model, "optimizer", None) is not None and (
        getattr(model, "loss", None) is not None
    )


def make_optimizer(model, optimizer=None):
    """A fresh optimizer: a copy of `optimizer` (else of `model`'s), else Adam(1e-3).

    Args:
        model: the dense model, whose compiled optimizer is copied.
        optimizer: optional override (name, config or instance; an instance is copied).

    Returns:
        A new `keras.optimizers.Optimizer` sharing no slot state.
    """
    source = optimizer
    if source is None and is_compiled(model):
        source = model.optimizer
    if source is None:
        return keras.optimizers.Adam(1e-3)
    if isinstance(source, keras.optimizers.Optimizer):
        return source.__class__.from_config(source.get_config())
    return keras.optimizers.get(source)


def make_loss(model, loss=None, from_logits=True):
    """`loss`, else `model`'s compiled loss, else sparse cross-entropy (`from_logits`)."""
    if loss is not None:
        return loss
    if is_compiled(model):
        return model.loss
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def outputs_logits(model, x):
    """Whether `model` outputs logits rather than probabilities, judged on up to 64 samples."""
    return not looks_like_probabilities(predict(model, x[:64]))


def fine_tune(
    model,
    scheme,
    x,
    y,
    *,
    method="mask",
    epochs=1,
    options=None,
    batch_size=32,
    optimizer=None,
    loss=None,
    from_logits=None,
    shrink=False,
    early_stop=None,
    seed=None,
    verbose=0,
    recalibrate=True,
    callbacks=None,
):
    """Compresses `model` with `scheme`, fine-tunes it and returns it stripped.

    `"mask"` applies the scheme and trains with its callbacks (masks and
    schedules enforced); `"distill"` does the same through `kc.distill` with
    `model` as the teacher; `"lc"` runs `kc.LC(scheme, **options)` on a copy of
    the dense model. The training is compiled with a fresh copy of `model`'s
    optimizer and its loss (see `make_optimizer`, `make_loss`). A loss that
    becomes NaN or infinite, or non-finite weights in the result, raise
    `FloatingPointError`. With `recalibrate`, the result's BatchNorm moving
    statistics are re-estimated on `x` (`kc.recalibrate_batchnorm`), before
    the early stop's check too: pruning and a short fine-tune leave them
    describing the dense model. `model` is never modified.

    Args:
        model: the trained dense `keras.Model`.
        scheme: a `kc` operator or `kc.Compose`.
        x: training inputs.
        y: training labels.
        method: one of `METHODS`.
        epochs: training epochs (0: one-shot compression, no training).
        options: keyword arguments of `kc.LC` or `kc.distill` (see `OPTIONS`).
        batch_size: training batch size.
        optimizer: optional optimizer overriding `model`'s.
        loss: optional loss overriding `model`'s.
        from_logits: whether `model` outputs logits (for an uncompiled model's
            loss and distillation); `None` judges from its outputs on `x`.
        shrink: remove the channels structured pruning zeroed (`kc.shrink`).
        early_stop: optional `(x_val, y_val, floor)`: after the first epoch, a
            model whose accuracy is below `floor` stops training (mask and
            distill methods).
        seed: optional seed set before training.
        verbose: `fit`'s verbosity.
        recalibrate: re-estimate BatchNorm statistics on `x` (turn it off
            when `x` is not drawn from the data the model will see, e.g.
            synthetic inputs).
        callbacks: optional `keras.callbacks.Callback`s added to the
            training's `fit` calls, after the scheme's (methods `"mask"` and
            `"distill"`; L-C runs its own loop without them). They see the
            one run's epochs in order, even when the early stop's check
            splits it over two fits.

    Returns:
        A `FineTuned` (`model`, `epochs_run`).

    Raises:
        SchemeError: the scheme does not apply to `model`, the method cannot
            run it, or the result cannot be stripped (shrunk).
        FloatingPointError: the training diverged.
        ValueError: bad `method` or `options`.

    Example:

    ```python
    tuned = fine_tune(model, kc.Prune(density=0.2), x, y, epochs=2)
    tuned.model.save("small.keras")
    ```
    """
    options = check_method(method, options)
    if not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"`epochs` must be a non-negative integer. Received: {epochs!r}.")
    # Operators that train with their own optimizer (`kc.HSPGPrune`).
    trainers = [op for op in scheme.operators() if op.training_optimizer is not None]
    if trainers and (method == "lc" or not epochs):
        raise SchemeError(
            f"{type(trainers[0]).__name__} works while it trains, with its own optimizer: use "
            f"fine_tune='mask' or 'distill' and epochs >= 1. Received: fine_tune={method!r}, "
            f"epochs={epochs}."
        )
    if len(trainers) > 1:
        raise SchemeError(
            f"A scheme takes one operator with its own training optimizer. Received: {trainers}"
        )
    if from_logits is None:
        from_logits = outputs_logits(model, x)
    steps = epochs * math.ceil(len(x) / batch_size)

    def compiled():  # a fresh optimizer each time: no slot state is shared
        return dict(
            optimizer=make_optimizer(model, optimizer), loss=make_loss(model, loss, from_logits)
        )

    fit = dict(batch_size=batch_size, verbose=verbose)
    if method == "lc" and epochs:
        lc = _guard(lambda: LC(scheme, **options), "fine_tune='lc' cannot run this scheme")
        source = strip(model)  # a copy, compiled with the fine-tuning optimizer and loss
        source.compile(**compiled())
        final = _guard(  # FloatingPointError (diverged) passes through
            lambda: lc.fit(source, x, y, epochs=epochs, seed=seed, **fit), "fine_tune='lc' failed"
        )
        epochs_run = epochs
        if shrink:
            final = _guard(lambda: shrink_model(final), "cannot shrink the L-C model")
    else:
        compressed = _guard(lambda: scheme.apply(model), "cannot apply the scheme")
        if seed is not None:
            keras.utils.set_random_seed(seed)
        epochs_run = 0
        if epochs:
            settings = compiled()
            if trainers:  # its optimizer, on the copy of the model's (or the given) one
                settings["optimizer"] = _guard(
                    lambda: trainers[0].training_optimizer(
                        compressed, settings["optimizer"], steps
                    ),
                    f"cannot make the training optimizer of {type(trainers[0]).__name__}",
                )
            compressed.compile(**settings)
            trainer = compressed
            if method == "distill":
                trainer = _guard(
                    lambda: distill(compressed, model, from_logits=from_logits, **options),
                    "fine_tune='distill' cannot pair the models",
                )
            # One run over two fits (see `_train`): schedules span both.
            fit["callbacks"] = scheme_callbacks(scheme, total_steps=steps) + list(callbacks or ())
            refresh = (
                (lambda: recalibrate_batchnorm(compressed, x, batch_size)) if recalibrate else None
            )
            epochs_run = _train(trainer, compressed, x, y, epochs, fit, early_stop, refresh)
        final = _guard(lambda: strip(compressed, shrink=shrink), "cannot strip the model")
    if recalibrate:  # The compressed model's BatchNorms see other inputs than the dense one's.
        recalibrate_batchnorm(final, x, batch_size)
    check_finite_weights(final)
    return FineTuned(model=final, epochs_run=epochs_run)


def _guard(step, what):
    try:
        return step()
    except (ValueError, TypeError) as e:
        raise SchemeError(f"{what}: {type(e).__name__}: {e}") from e


def _train(trainer, compressed, x, y, epochs, fit, early_stop, refresh=None):
    """Fits `trainer` (the compressed model or its distiller); returns the epochs run.

    `refresh` (BatchNorm recalibration) runs before the early stop's check.
    """
    check_finite_losses(trainer.fit(x, y, epochs=1, **fit))
    if epochs == 1:
        return 1
    if early_stop is not None:
        x_val, y_val, floor = early_stop
        if refresh is not None:
            refresh()
        if model_accuracy(compressed, x_val, y_val, fit["batch_size"]) < floor:
            return 1
    check_finite_losses(trainer.fit(x, y, epochs=epochs, initial_epoch=1, **fit))
    return epochs
