"""`distill_best`: the final fine-tune of a search's answer, by distillation from the dense model.

Hu et al. 2018 end their genetic channel pruning with a longer fine-tune in
which the dense model teaches the pruned one (knowledge distillation). This
is that step for any `CompressionTuner`, whatever its oracle, with the
tuner's optimizer, loss, batch size, `shrink` and seed. It starts either
from the dense weights (the best trial's scheme applied again and
fine-tuned through the shared workflow, `workflows.fine_tune` with
`method="distill"`), as the paper does, or from the trial's own fine-tuned
model (shrunk: nothing is left to prune, so no scheme is needed).
"""

import numbers

import keras
import keras_tuner

from keras_condensa.compiling import check_finite_losses
from keras_condensa.distill import distill
from keras_condensa.recalibrate import recalibrate_batchnorm
from keras_condensa.workflows.fine_tune import fine_tune, make_loss, make_optimizer
from keras_condensa.workflows.measure import check_finite_weights

STARTS = ("dense", "trial")


def distill_best(tuner, epochs, trial=None, start="dense", temperature=4.0, alpha=0.9, verbose=0):
    """Fine-tunes the best trial's compression by distillation, the dense model teaching.

    Args:
        tuner: a `CompressionTuner` after `search()`.
        epochs: distillation epochs, a positive int.
        trial: optional `Trial` instead of `tuner.best_trial()`.
        start: `"dense"` (default): the trial's scheme applied to the dense
            weights again, then `epochs` of distillation (the paper's
            recipe: give it at least the trials' epochs); `"trial"`: the
            trial's saved, fine-tuned model distilled further (needs a
            tuner with `shrink=True`, whose models have no pruned channels
            left to keep at zero).
        temperature: softmax temperature of the soft targets (> 0).
        alpha: weight of the soft-target loss, in [0, 1].
        verbose: `fit`'s verbosity.

    Returns:
        The stripped (with the tuner's `shrink=True`, shrunk) `keras.Model`.

    Raises:
        ValueError: `epochs` is not a positive integer, `start` is unknown or
            `"trial"` without `shrink=True`, or `temperature` or `alpha` is
            out of range.
        FloatingPointError: the distillation diverged.
        RuntimeError: no trial completed.
        keras_tuner.errors.FailedTrialError: the scheme cannot be built
            from the trial's values.

    Example:

    ```python
    tuner.search()
    final = kc.search.distill_best(tuner, epochs=10)
    further = kc.search.distill_best(tuner, epochs=5, start="trial")  # shrink=True
    ```
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(
            f"`epochs` of the final distillation must be a positive integer. Received: "
            f"epochs={epochs!r}."
        )
    if start not in STARTS:
        raise ValueError(f"`start` must be one of {STARTS}. Received: start={start!r}.")
    if start == "trial" and not tuner.shrink:
        raise ValueError(
            "start='trial' continues from the trial's saved model, which keeps its pruned "
            "weights as zeros that further training would regrow without the tuner's "
            "shrink=True; use start='dense' (the scheme is applied again)."
        )
    trial = tuner.best_trial() if trial is None else trial
    if start == "trial":
        return _from_trial(tuner, trial, int(epochs), temperature, alpha, verbose)
    try:
        scheme = tuner.scheme(trial.hyperparameters)
    except Exception as e:
        raise keras_tuner.errors.FailedTrialError(
            f"Trial {trial.trial_id} ({trial.hyperparameters.values}): building the scheme "
            f"failed: {type(e).__name__}: {e}"
        ) from e
    tuned = fine_tune(
        tuner.model,
        scheme,
        tuner.x_train,
        tuner.y_train,
        method="distill",
        epochs=int(epochs),
        options={"temperature": temperature, "alpha": alpha},
        batch_size=tuner.batch_size,
        optimizer=tuner._optimizer,
        loss=tuner._loss,
        from_logits=tuner._from_logits,
        shrink=tuner.shrink,
        seed=tuner.seed,
        verbose=verbose,
        recalibrate=tuner.recalibrate,
    )
    return tuned.model


def _from_trial(tuner, trial, epochs, temperature, alpha, verbose):
    student = tuner.load_model(trial)
    student.compile(
        optimizer=make_optimizer(tuner.model, tuner._optimizer),
        loss=make_loss(tuner.model, tuner._loss, tuner._from_logits),
    )
    distiller = distill(
        student, tuner.model, temperature=temperature, alpha=alpha, from_logits=tuner._from_logits
    )
    if tuner.seed is not None:
        keras.utils.set_random_seed(tuner.seed)
    history = distiller.fit(
        tuner.x_train, tuner.y_train, epochs=epochs, batch_size=tuner.batch_size, verbose=verbose
    )
    check_finite_losses(history, "the final distillation")
    if tuner.recalibrate:
        recalibrate_batchnorm(student, tuner.x_train, tuner.batch_size)
    check_finite_weights(student)
    return student
