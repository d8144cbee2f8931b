"""A search project on disk: what it was searched for, and its state rebuilt after a crash.

`fingerprint` digests the model, the data and the scheme a project's trials
depend on; `check_fingerprint` refuses to resume a project of other inputs
(it would return that search's models). `rebuild_oracle_state` sets an
oracle's state from its trial files when `oracle.json` was damaged.
"""

import hashlib
import json
import os

import keras
import numpy as np

FINGERPRINT_FILE = "fingerprint.json"


def _config_of(model):
    try:
        return json.loads(json.dumps(model.get_config(), default=str))
    except Exception:  # A subclassed model without get_config: its class and weights.
        return {"class": type(model).__qualname__}


def fingerprint(model, arrays, setup):
    """Digests of what a project's trials depend on.

    Args:
        model: the dense `keras.Model` (configuration and weights).
        arrays: the data arrays (x_train, y_train, x_val, y_val).
        setup: a JSON-able dict of the search's settings (space, scheme, ...).

    Returns:
        A dict with `model`, `data` and `scheme` digests, `model_name`, `params`.
    """
    digest = hashlib.sha256(json.dumps(_config_of(model), sort_keys=True).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    data = hashlib.sha256()
    for array in arrays:
        data.update(f"{array.shape}{array.dtype}".encode())
        data.update(np.ascontiguousarray(array).tobytes())
    scheme = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
    return {
        "model": digest.hexdigest(),
        "data": data.hexdigest(),
        "scheme": scheme.hexdigest(),
        "model_name": model.name,
        "params": int(model.count_params()),
    }


def tuner_fingerprint(tuner, hp, objective):
    """The `fingerprint` of a `CompressionTuner`'s model, data and search settings."""
    try:
        example = repr(tuner.scheme(hp))
    except Exception as e:  # The defaults may be invalid; the space still says a lot.
        example = type(e).__name__
    setup = {
        "space": hp.get_config(),
        "scheme": example,
        "objective": objective.name,
        "fine_tune": tuner.fine_tune,
        "fine_tune_epochs": tuner.fine_tune_epochs,
        "fine_tune_options": tuner.fine_tune_options,
        "shrink": tuner.shrink,
        "quantize": tuner.quantize,
    }
    arrays = (tuner.x_train, tuner.y_train, tuner.x_val, tuner.y_val)
    return fingerprint(tuner.model, arrays, setup)


def check_fingerprint(project_dir, expected):
    """Raises unless the project in `project_dir` (if any) was searched for the same inputs.

    Raises:
        ValueError: naming what differs and the fix (`overwrite=True`).
    """
    path = os.path.join(project_dir, FINGERPRINT_FILE)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    changed = [k for k in ("model", "data", "scheme") if saved.get(k) != expected[k]]
    if changed:
        what = {"model": "another model", "data": "other data", "scheme": "another scheme"}
        other = (
            f" ('{saved.get('model_name')}', {saved.get('params'):,} parameters; this one "
            f"'{expected['model_name']}' has {expected['params']:,})"
            if "model" in changed and saved.get("params") is not None
            else ""
        )
        raise ValueError(
            f"The project in {project_dir} is a search of "
            f"{' and '.join(what[k] for k in changed)}{other}; resuming it would return that "
            "search's models. Pass overwrite=True (--overwrite) to start afresh, or choose "
            "another directory or project_name."
        )


def rebuild_oracle_state(oracle):
    """Sets `oracle`'s state from its trials (loaded from their files), as a reload would."""
    trials = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
    hashes = {t.trial_id: oracle._compute_values_hash(t.hyperparameters.values) for t in trials}
    for trial in trials:
        oracle.hyperparameters.merge(trial.hyperparameters.space)
    state = oracle.get_state()
    state.update(
        ongoing_trials={},
        start_order=[t.trial_id for t in trials],
        end_order=[t.trial_id for t in trials if t.status != "RUNNING"],
        run_times={t.trial_id: 1 for t in trials},
        retry_queue=[t.trial_id for t in trials if t.status == "RUNNING"],
        tried_so_far=sorted(set(hashes.values())),
        id_to_hash=hashes,
    )
    oracle.set_state(state)
