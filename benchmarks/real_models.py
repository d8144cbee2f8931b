"""Models nobody here wrote: coverage, shrink and int8 on keras.applications and KerasHub.

Per model (built with `weights=None`, or a KerasHub backbone from a config), trained
briefly on scikit-learn's digits (upsampled to the model's input for the CNNs, as 16
grey-level tokens for BERT):

- covered: the fraction of the parameters `kc.Prune` reaches (`kc.summary().coverage`);
- shrink: `FilterPrune(0.5)` then `kc.shrink`: parameters, FLOPs (2 x multiply-adds of
  conv/dense layers) and LiteRT p50 (float32, batch 1, 1 thread, XNNPACK) of the dense
  and the shrunk model, and the largest output difference between the masked and the
  shrunk model;
- int8: post-training int8 (PTQ, 100 representative samples) of the dense model against
  QAT int8 (`Compose([Prune(0.2), Quantize("int8")])`, one epoch, `kc.strip`, exported
  from its own ranges): LiteRT p50, the op types that differ, and each file's top-1
  agreement and largest error against its Keras model. The QAT model is pruned, so its
  file stores sparse weights behind DENSIFY ops (run once, at load): those are not counted.

Latencies are medians of 200 runs after 20 warm-up runs; ratios are from the same run.

Run: `KERAS_BACKEND=tensorflow .venv/bin/python benchmarks/real_models.py [--models ...]`
"""

import argparse
import os
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_condensa as kc  # noqa: E402
import tflite_export as te  # noqa: E402

CNNS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    ),
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
        input_shape=(96, 96, 3),
        weights=None,
        classes=10,
        include_preprocessing=False,
        classifier_activation=None,
    ),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
        input_shape=(96, 96, 3), weights=None, classes=10, classifier_activation=None
    ),
    "ResNet50": lambda: keras.applications.ResNet50(
        input_shape=(64, 64, 3), weights=None, classes=10, classifier_activation=None
    ),
}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # the heads give logits


def digits_images(size):
    data = load_digits()
    images = np.repeat(data.images[..., None] / 16.0, 3, axis=-1).astype("float32")
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (size, size)))
    return x, data.target


def digits_tokens():
    data = load_digits()
    grey = data.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4))
    tokens = (np.round(grey).astype("int32") + 1).reshape(-1, 16)
    x = {
        "token_ids": tokens,
        "padding_mask": np.ones_like(tokens),
        "segment_ids": np.zeros_like(tokens),
    }
    return x, data.target


def bert():
    import keras_hub  # noqa: PLC0415

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=200,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=16,
    )
    inputs = {
        n: keras.Input((16,), dtype="int32", name=n)
        for n in ("token_ids", "padding_mask", "segment_ids")
    }
    outputs = keras.layers.Dense(10, name="logits")(backbone(inputs)["pooled_output"])
    return keras.Model(inputs, outputs, name="bert_classifier")


def take(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def flops(model):
    total = 0
    for layer in model._flatten_layers(include_self=False):
        if not hasattr(layer, "kernel") or not getattr(layer, "_inbound_nodes", None):
            continue
        try:
            out = layer.output.shape
        except (AttributeError, ValueError):
            continue
        positions = int(np.prod([d for d in out[1:-1] if d])) if len(out) > 2 else 1
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += 2 * positions * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            total += 2 * positions * int(np.prod(layer.kernel.shape))
    return total


def compile_model(model):
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    return model


def export(model, directory, name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return te.export(model, os.path.join(directory, f"{name}.tflite"), **kwargs)


def p50(result):
    return te.benchmark(result, num_threads=1, runs=200, warmup=20).p50_ms


def quiet_apply(scheme, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scheme.apply(model)


def run_model(name, build, x, y, directory):
    keras.utils.set_random_seed(0)
    model = compile_model(build())
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    row = {"model": name, "params": model.count_params()}
    row["covered"] = kc.summary(quiet_apply(kc.Prune(0.5), model), print_fn=None).coverage
    val = take(x, 200)

    if name in CNNS:
        masked = quiet_apply(kc.FilterPrune(0.5), model)
        shrunk = kc.shrink(masked)
        reference = kc.strip(masked)
        row["shrunk_params"] = shrunk.count_params()
        row["flops"], row["shrunk_flops"] = flops(model), flops(shrunk)
        row["shrink_diff"] = float(
            np.max(np.abs(reference.predict(val, verbose=0) - shrunk.predict(val, verbose=0)))
        )
        row["p50"] = p50(export(model, directory, f"{name}_dense"))
        row["shrunk_p50"] = p50(export(shrunk, directory, f"{name}_shrunk"))

    float_file = export(model, directory, f"{name}_float")
    row["float_agree"] = te.verify(float_file, model, val).top1_agreement
    ptq = export(model, directory, f"{name}_ptq", quantize="int8", representative_data=take(x, 100))
    scheme = kc.Compose([kc.Prune(0.2), kc.Quantize("int8")])
    qat_model = compile_model(quiet_apply(scheme, model))
    qat_model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=kc.callbacks(scheme))
    final = kc.strip(qat_model)
    qat = export(final, directory, f"{name}_qat", quantize="int8")
    for key, result, keras_model in (("ptq", ptq, model), ("qat", qat, final)):
        check = te.verify(result, keras_model, val)
        row[f"{key}_agree"], row[f"{key}_err"] = check.top1_agreement, check.max_abs_error
        row[f"{key}_p50"] = p50(result)
        row[f"{key}_ops"] = te.op_counts(result)
    return row


def ops_difference(qat, ptq):
    keys = sorted(set(qat) | set(ptq))
    # DENSIFY unpacks a sparse-encoded (pruned) weight once, when the file is loaded.
    diff = [f"{k} {qat[k] - ptq[k]:+d}" for k in keys if qat[k] != ptq[k] and k != "DENSIFY"]
    return ", ".join(diff) or "same op types and counts"


def print_tables(rows):
    print("\nCoverage and shrink (FilterPrune 0.5 + kc.shrink; LiteRT float32, batch 1, 1 thread)")
    print(
        "| model | params | covered | shrunk params | FLOPs dense -> shrunk "
        "| p50 ms dense -> shrunk (x) | max |masked - shrunk| |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "shrunk_params" in r:
            print(
                f"| {r['model']} | {r['params']:,} | {r['covered']:.1%} | {r['shrunk_params']:,} "
                f"({r['shrunk_params'] / r['params']:.2f}x) | {r['flops'] / 1e6:.1f}M -> "
                f"{r['shrunk_flops'] / 1e6:.1f}M | {r['p50']:.3f} -> {r['shrunk_p50']:.3f} "
                f"({r['shrunk_p50'] / r['p50']:.2f}x) | {r['shrink_diff']:.1e} |"
            )
        else:
            print(
                f"| {r['model']} | {r['params']:,} | {r['covered']:.1%} | n/a | n/a | n/a | n/a |"
            )
    print("\nint8: QAT (Prune 0.2 + Quantize int8, 1 epoch, own ranges) vs post-training int8")
    print(
        "| model | float top-1 agree | PTQ p50 ms | QAT p50 ms | QAT/PTQ | PTQ agree / max err "
        "| QAT agree / max err | QAT ops - PTQ ops |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['float_agree']:.3f} | {r['ptq_p50']:.3f} | {r['qat_p50']:.3f} | "
            f"{r['qat_p50'] / r['ptq_p50']:.2f} | {r['ptq_agree']:.3f} / {r['ptq_err']:.3f} | "
            f"{r['qat_agree']:.3f} / {r['qat_err']:.3f} | "
            f"{ops_difference(r['qat_ops'], r['ptq_ops'])} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*CNNS, "BERT"], choices=[*CNNS, "BERT"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models:
            if name == "BERT":
                x, y = digits_tokens()
                rows.append(run_model(name, bert, x, y, directory))
            else:
                size = CNNS[name]().input_shape[1]
                x, y = digits_images(size)
                rows.append(run_model(name, CNNS[name], x, y, directory))
            print(f"done: {name}", flush=True)
    print_tables(rows)


if __name__ == "__main__":
    main()
