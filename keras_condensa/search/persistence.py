"""How `ConstrainedBayesianOracle` keeps its state on disk: whole files, or none.

Keras Tuner writes `oracle.json` and each `trial.json` in place; a crash in
the middle leaves a truncated file that stops the project from resuming.
`AtomicState` writes each through a temporary name and a rename, and says
what to do when there is no project directory.
"""

import os

from keras_tuner.src import utils as kt_utils

from keras_condensa.files import write_json_atomically


class AtomicState:
    """A `keras_tuner.Oracle` mix-in: atomic `save`, and `reload` with a clear error."""

    def save(self):
        """Saves the state to the project directory, when there is one, atomically."""
        if _has_project_dir(self):
            _save_json(self._get_oracle_fname(), self.get_state())

    def reload(self):
        """Reloads trials and state from the project directory.

        Raises:
            RuntimeError: if no project directory is set.
        """
        if not _has_project_dir(self):
            raise RuntimeError(
                "This oracle has no project directory to reload from. A Tuner sets "
                "one; alone, call `oracle._set_project_dir(directory, project_name)` "
                "before the search and before `reload()`."
            )
        super().reload()

    def _save_trial(self, trial):
        if _has_project_dir(self):
            path = os.path.join(self._get_trial_dir(trial.trial_id), "trial.json")
            _save_json(path, trial.get_state())


def _save_json(path, obj):
    """Writes `obj` as JSON to `path`, atomically where the file system can.

    Remote paths (`gs://...`, which Keras Tuner supports through TensorFlow's
    file system) have no atomic rename and are written directly.
    """
    if "://" in str(path):
        kt_utils.save_json(path, obj)
    else:
        write_json_atomically(path, obj)


def _has_project_dir(oracle):
    return getattr(oracle, "_directory", None) is not None and os.fspath(oracle._directory) != ""
