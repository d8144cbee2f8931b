"""The tensorflow-model-optimization side of the benchmarks, in its own process.

Importing tensorflow_model_optimization sets TF_USE_LEGACY_KERAS=1 and turns
`tf.keras` into `tf_keras` for the whole process, so it must never share a
process with keras_condensa (Keras 3). The benchmark scripts run this file
as a subprocess:

    python benchmarks/_tfmot_twin.py overhead '<json config>'
    python benchmarks/_tfmot_twin.py accuracy '<json config>'
    python benchmarks/_tfmot_twin.py accuracy - < config.json
    python benchmarks/_tfmot_twin.py accuracy_qat - < config.json
    python benchmarks/_tfmot_twin.py export - < config.json

and read one JSON object from the last line of stdout. The models are tf_keras
twins of the Keras 3 ones (`_digits.build(name, tf_keras)`: same layers,
order and shapes), trained on the same split with the same optimizer,
pruned with `prune_low_magnitude` + `PolynomialDecay`, the
`UpdatePruningStep` callback, then `strip_pruning`.
"""

import gzip
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _digits  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402  (must come before tf_keras use)
import tf_keras  # noqa: E402

sparsity = tfmot.sparsity.keras


def schedule(density, begin_step, end_step, frequency):
    return sparsity.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=1.0 - density,
        begin_step=int(begin_step),
        end_step=int(end_step),
        power=3,
        frequency=int(frequency),
    )


def prune(model, density, begin_step, end_step, frequency):
    pruned = sparsity.prune_low_magnitude(
        model, pruning_schedule=schedule(density, begin_step, end_step, frequency)
    )
    _digits.compile_model(pruned, tf_keras)
    return pruned, [sparsity.UpdatePruningStep()]


def overhead(config):
    """Step times of the plain tf_keras model and of its tfmot-pruned twin."""
    results = {}
    for model_name in config["models"]:
        for batch_size in config["batch_sizes"]:

            def plain(name, total_steps):
                model = _digits.build(name, tf_keras)
                _digits.compile_model(model, tf_keras)
                return model, []

            def pruned(name, total_steps):
                end = int(round(config["end_fraction"] * total_steps))
                return prune(
                    _digits.build(name, tf_keras), config["density"], 0, end, config["frequency"]
                )

            row = _digits.time_variants(
                {"plain": plain, "pruned": pruned},
                model_name,
                batch_size,
                config["epochs"],
                tf_keras,
            )
            row["plain"].pop("model")
            model = row["pruned"].pop("model")
            # The pruned model's final density, to show that the schedule ran.
            row["pruned"]["density"] = _digits.kernel_density(sparsity.strip_pruning(model))
            results[f"{model_name}/{batch_size}"] = row
    return results


def accuracy(config):
    """Fine-tunes dense weights (.npz) with tfmot pruning; returns accuracy and density per job."""
    model_name = config.get("model", "lenet300")
    x_train, y_train, x_val, y_val = _digits.load(model_name)
    out = []
    for job in config["jobs"]:
        final = _prune_and_fit(
            model_name, job, config, x_train, y_train, config["begin_step"], config["end_step"]
        )
        acc = _digits.accuracy(final, x_val, y_val)
        out.append({"acc": acc, "density": _digits.kernel_density(final)})
    return {"results": out}


def _quantized_kernel_density(model):
    """Nonzero fraction over the kernels of a tfmot QAT model, as the int8 model stores them.

    With the prune-preserving scheme the float kernel may drift off zero during
    QAT, but the quantizer multiplies it by a frozen `pruning_mask` before
    quantizing, so the deployed weight is `kernel * mask`; without a mask the
    float kernel is what gets quantized (a weight that is nonzero in float
    may still round to 0 in int8, which is not counted here).
    """
    nonzeros = total = 0
    for layer in model.layers:
        kernels, masks = [], []
        for w in layer.weights:
            name = w.name.split("/")[-1].split(":")[0]
            if name == "kernel":
                kernels.append(w.numpy())
            elif "pruning_mask" in name:
                masks.append(w.numpy())
        for i, k in enumerate(kernels):
            if i < len(masks) and masks[i].shape == k.shape:
                k = k * masks[i]
            nonzeros += int(np.count_nonzero(k))
            total += k.size
    return nonzeros / total if total else 1.0


def _prune_then_qat(model_name, job, config, x_train, y_train):
    """`epochs - qat_epochs` epochs of pruning, `strip_pruning`, then `qat_epochs` of QAT.

    Returns `(qat_model, pruned_density, scheme_name)`.
    """
    quant = tfmot.quantization.keras
    qat_epochs = int(config.get("qat_epochs", 2))
    prune_epochs = int(config["epochs"]) - qat_epochs
    if prune_epochs < 1:
        raise ValueError(f"epochs ({config['epochs']}) must exceed qat_epochs ({qat_epochs})")
    steps = prune_epochs * _digits.steps_per_epoch(len(x_train), config["batch_size"])
    begin_step = int(round(config["begin_fraction"] * (steps - 1)))
    end_step = int(round(config["end_fraction"] * (steps - 1)))
    combine = getattr(getattr(tfmot, "experimental", None), "combine", None)
    scheme_cls = getattr(combine, "Default8BitPrunePreserveQuantizeScheme", None)
    model = _load_weights(model_name, job)
    pruned, callbacks = prune(model, job["density"], begin_step, end_step, config["frequency"])
    fit = dict(batch_size=config["batch_size"], verbose=0)
    pruned.fit(x_train, y_train, epochs=prune_epochs, callbacks=callbacks, **fit)
    stripped = sparsity.strip_pruning(pruned)
    pruned_density = _digits.kernel_density(stripped)
    if scheme_cls is not None:
        qat = quant.quantize_apply(quant.quantize_annotate_model(stripped), scheme_cls())
    else:
        qat = quant.quantize_model(stripped)
    _digits.compile_model(qat, tf_keras)
    qat.fit(x_train, y_train, epochs=qat_epochs, **fit)
    return qat, pruned_density, "prune_preserve" if scheme_cls is not None else "quantize_model"


def _prune_and_fit(model_name, job, config, x_train, y_train, begin_step, end_step):
    """The job's dense weights, pruned and fine-tuned for `epochs`, then stripped."""
    pruned, callbacks = prune(
        _load_weights(model_name, job), job["density"], begin_step, end_step, config["frequency"]
    )
    pruned.fit(
        x_train,
        y_train,
        batch_size=config["batch_size"],
        epochs=int(config["epochs"]),
        verbose=0,
        callbacks=callbacks,
    )
    return sparsity.strip_pruning(pruned)


def _load_weights(model_name, job):
    tf_keras.utils.set_random_seed(job["seed"])
    model = _digits.build(model_name, tf_keras)
    with np.load(job["weights"]) as f:
        model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])
    return model


def accuracy_qat(config):
    """Prune then quantization-aware training, in the same total number of epochs.

    `epochs - qat_epochs` epochs of `prune_low_magnitude` + `PolynomialDecay`
    (the schedule's begin/end fractions applied to those epochs' steps), then
    `strip_pruning`, then `qat_epochs` epochs of QAT with
    `Default8BitPrunePreserveQuantizeScheme` (falling back to plain
    `quantize_model` where it is missing). Accuracy is the QAT model's own
    (fake-quantized) forward pass on the validation split.
    """
    model_name = config.get("model", "lenet300")
    x_train, y_train, x_val, y_val = _digits.load(model_name)
    out = []
    for job in config["jobs"]:
        qat, pruned_density, scheme = _prune_then_qat(model_name, job, config, x_train, y_train)
        out.append(
            {
                "acc": _digits.accuracy(qat, x_val, y_val),
                "density": _quantized_kernel_density(qat),
                "pruned_density": pruned_density,
                "scheme": scheme,
            }
        )
    return {"results": out}


def export(config):
    """tfmot's two routes to an int8 LiteRT file, converted and run like ours.

    Per job, `method` is `"ptq"` (prune for `epochs`, `strip_pruning`, then the
    TFLite converter's full-integer post-training quantization calibrated on
    300 training images: the route tfmot's pruning guide documents) or
    `"pqat"` (`_prune_then_qat`, then conversion from the QAT model's ranges).
    Weights use the dense encoding, as the Keras 3 side's int8 files do.
    Returns the file's bytes, gzip -9 bytes and top-1 accuracy run with the
    ai-edge-litert interpreter, and the tf_keras model's accuracy before conversion.
    """
    import tensorflow as tf  # noqa: PLC0415  (after tfmot: tf.keras is tf_keras here)
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    model_name = config.get("model", "lenet300")
    x_train, y_train, x_val, y_val = _digits.load(model_name)
    calibration = x_train[:300]
    out = []
    for job in config["jobs"]:
        if job["method"] == "pqat":
            final, _, _ = _prune_then_qat(model_name, job, config, x_train, y_train)
        else:
            per_epoch = _digits.steps_per_epoch(len(x_train), config["batch_size"])
            steps = int(config["epochs"]) * per_epoch
            final = _prune_and_fit(
                model_name,
                job,
                config,
                x_train,
                y_train,
                int(round(config["begin_fraction"] * (steps - 1))),
                int(round(config["end_fraction"] * (steps - 1))),
            )
        converter = tf.lite.TFLiteConverter.from_keras_model(final)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if job["method"] == "ptq":
            converter.representative_dataset = lambda: ([c[None]] for c in calibration)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        content = converter.convert()
        interpreter = Interpreter(model_content=content)
        inputs, outputs = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inputs["index"], x_val.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inputs["index"], x_val.astype(inputs["dtype"]))
        interpreter.invoke()
        predicted = interpreter.get_tensor(outputs["index"]).argmax(-1)
        out.append(
            {
                "bytes": len(content),
                "gzip": len(gzip.compress(content, compresslevel=9, mtime=0)),
                "acc": float(np.mean(predicted == y_val)),
                "keras_acc": _digits.accuracy(final, x_val, y_val),
            }
        )
    return {"results": out}


def main():
    # The config comes as an argument, or on stdin with "-" (the caller can start this
    # process, which takes a while to import TensorFlow, before the config is ready).
    mode, config = sys.argv[1], json.loads(sys.stdin.read() if sys.argv[2] == "-" else sys.argv[2])
    modes = {
        "overhead": overhead,
        "accuracy": accuracy,
        "accuracy_qat": accuracy_qat,
        "export": export,
    }
    result = modes[mode](config)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
