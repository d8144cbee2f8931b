"""The search runs in Keras Tuner's chief/worker mode: a chief and two workers on loopback."""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, os, sys
import keras, numpy as np
from keras_condensa.search.tuner import CompressionTuner
import keras_condensa as kc

data = np.load(sys.argv[1])
model = keras.saving.load_model(sys.argv[2])
tuner = CompressionTuner(
    model,
    scheme=lambda hp: kc.Prune(density=hp.Float("density", 0.02, 1.0, sampling="log")),
    train_data=(data["x_train"], data["y_train"]),
    validation_data=(data["x_val"], data["y_val"]),
    max_accuracy_drop=0.05, objective="nonzero_params", max_trials=4,
    fine_tune_epochs=1, directory=sys.argv[3], project_name="dist", seed=0,
)
tuner.search()
if os.environ["KERASTUNER_TUNER_ID"] == "chief":
    trials = tuner.oracle.trials.values()
    print(json.dumps({
        "completed": sum(t.status == "COMPLETED" for t in trials),
        "floor": tuner.accuracy_floor,
        "best_accuracy": tuner.oracle.get_best_trials(1)[0].metrics.get_last_value("val_accuracy"),
    }))
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="Keras Tuner's chief/worker protocol does not depend on the backend; one run is enough",
)
def test_chief_and_two_workers_share_one_search(tmp_path, digits):
    import keras
    import numpy as np
    from conftest import compile_classifier

    x_train, y_train, x_val, y_val = digits
    np.savez(tmp_path / "data.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    keras.utils.set_random_seed(0)
    model = compile_classifier(keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    ))
    model.fit(x_train, y_train, epochs=10, verbose=0)
    model.save(tmp_path / "dense.keras")
    (tmp_path / "run.py").write_text(SCRIPT)
    port = str(_free_port())
    processes = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = dict(os.environ, KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=port,
                   KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "tensorflow"))
        processes[tuner_id] = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "data.npz"),
             str(tmp_path / "dense.keras"), str(tmp_path / "runs")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    outputs = {}
    try:
        for tuner_id, process in processes.items():
            outputs[tuner_id] = process.communicate(timeout=420)
    finally:
        for process in processes.values():
            process.kill()
    for tuner_id, process in processes.items():
        assert process.returncode == 0, (tuner_id, outputs[tuner_id][1][-3000:])
    result = json.loads(outputs["chief"][0].strip().splitlines()[-1])
    assert result["completed"] == 4
    assert result["best_accuracy"] >= result["floor"]
    # The chief only serves the oracle: the workers ran every trial, in the shared project.
    trial_dirs = [d for d in (tmp_path / "runs" / "dist").iterdir() if d.name.startswith("trial_")]
    assert len(trial_dirs) == 4
