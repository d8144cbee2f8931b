"""The `keras-condensa` argument parser: its subcommands, options and help texts.

`keras_condensa.cli` runs the command the parsed arguments name.
"""

import argparse

from keras_condensa import scheme_grammar
from keras_condensa.cli_checks import confidence, densities, fraction, image_size, int_at_least

_QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8")
_OBJECTIVES = ("tflite_bytes", "tflite_gzip_bytes", "litert_latency_ms", "coded_bytes")
_OBJECTIVES += ("nonzero_params", "params", "flops", "keras_latency_ms")


def _data_free_option(parser):
    parser.add_argument(
        "--data-free",
        nargs="?",
        const="auto",
        choices=("auto", "batchnorm", "inception", "batchnorm+inception"),
        help="fine-tune without training data, on inputs synthesized from the model: batchnorm "
        "matches its BatchNorm statistics, inception maximizes class outputs (no BatchNorm "
        "needed), auto (the default) picks batchnorm when the model has BatchNorm; labels are "
        "the dense model's predictions (kc.data_free.synthesize)",
    )


_DATA = (
    "an .npz, a directory of images in class folders, or module:function returning "
    "(train, val) (see keras-condensa --help)"
)


def _image_size_option(parser):
    parser.add_argument(
        "--image-size",
        type=image_size,
        metavar="H,W",
        help="the size images of a --data directory are resized to (default: the model's input "
        "size; needed when the model takes any size)",
    )


def build_parser():
    """The `argparse` parser of `keras-condensa` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument(
        "--verbose",
        action="store_true",
        help="show what the libraries print (TensorFlow, the TFLite converter, absl, warnings) "
        "instead of keeping it in the command's log file",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with the results at the end, and nothing else, on stdout",
    )
    parser = argparse.ArgumentParser(
        prog="keras-condensa",
        description="Compress Keras 3 models: prune and quantize, search the cheapest "
        "compression under an accuracy floor, export to LiteRT, benchmark.",
        epilog="Exit status: 0 success, 1 failure, 2 bad usage or input, 130 interrupted. "
        "--data is an .npz holding x_train, y_train, x_val, y_val (optionally x_test, y_test); "
        "or a directory of images in one folder per class (train/ and val/ subfolders are the "
        "splits, else a fixed fifth of the images is the validation split; resized to the "
        "model's input size or --image-size; integer labels, pixels 0-255); or module:function "
        "(mypkg.data:load, path/to/data.py:load) returning (train, val) or (train, val, test), "
        "each (x, y) arrays, a tf.data.Dataset or an iterable of (x, y) batches. All of it is "
        "read into memory. What the libraries print goes to the command's log file, not the "
        "terminal (--verbose shows it): OUT/search/keras-condensa.log for search and demo, the "
        "output file's name plus .log for compress and export, keras-condensa.log in the "
        "temporary directory for bench.",
    )
    from keras_condensa.version import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "compress",
        parents=[common],
        help="apply a scheme, fine-tune, strip, save",
        description="Apply a compression scheme to a model, fine-tune it with the masks "
        "enforced, strip the wrappers and save the plain model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scheme grammar:\n  " + "\n  ".join(scheme_grammar.table_lines()),
    )
    p.add_argument("model", help="the trained .keras model")
    p.add_argument(
        "--data",
        help=f"training and validation data: {_DATA} (with --data-free: only its validation "
        "arrays are used, and it is optional)",
    )
    _image_size_option(p)
    _data_free_option(p)
    p.add_argument("--scheme", required=True, help=scheme_grammar.help_text())
    p.add_argument(
        "--epochs", type=int_at_least(0), default=1, help="fine-tuning epochs (default 1)"
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help=argparse.SUPPRESS)
    p.add_argument(
        "--fine-tune",
        choices=("mask", "lc", "distill", "none"),
        help="mask: fine-tune with the masks enforced (default; distill with --data-free); "
        "lc: Condensa's L-C optimizer (kc.LC, --epochs of training); distill: mask "
        "fine-tuning that also learns from the dense model's soft targets (kc.Distiller); "
        "none: one-shot, no training",
    )
    p.add_argument(
        "--shrink",
        action="store_true",
        help="remove the neurons and filters that structured pruning zeroed (kc.shrink): "
        "a smaller, faster model instead of one full of zeros",
    )
    p.add_argument("--out", required=True, help="the compressed .keras model to write")

    p = sub.add_parser(
        "search",
        parents=[common],
        help="constrained search over prune density",
        description="Search the prune density (log scale, 0.01 to 1) that minimises "
        "--objective with the validation accuracy at or above the floor. Writes "
        "OUT/best.keras, OUT/best.tflite, OUT/report.md, OUT/pareto.png, OUT/trials.csv; "
        "the Keras Tuner project lives in OUT/search/. An interrupted search (OUT holds "
        "only search/) resumes when the same command is run again; a finished one is "
        "refused unless --overwrite.",
    )
    p.add_argument("model", help="the trained .keras model")
    p.add_argument(
        "--data",
        help=f"training, validation and optionally test data: {_DATA}; the test split is the "
        "held-out check (does the returned model meet the floor on data the search never saw?); "
        "with --data-free only the validation and test arrays are used, and are optional",
    )
    _image_size_option(p)
    _data_free_option(p)
    floor = p.add_mutually_exclusive_group(required=True)
    floor.add_argument("--accuracy-floor", type=fraction, help="absolute validation accuracy floor")
    floor.add_argument(
        "--max-drop", type=fraction, help="floor = dense validation accuracy minus this (e.g. 0.01)"
    )
    p.add_argument(
        "--confidence",
        type=confidence,
        default=0.8,
        help="how sure the search must be that the model it returns meets the floor, a "
        "probability in [0.5, 1) (default 0.8): its accuracy is estimated from all readings "
        "and their measured noise, not from one lucky reading",
    )
    p.add_argument(
        "--objective",
        choices=_OBJECTIVES,
        default="tflite_bytes",
        help="the cost to minimise (default tflite_bytes)",
    )
    p.add_argument(
        "--max-trials",
        type=int_at_least(1),
        default=10,
        help="trials in all (default 10); the search ends sooner once the boundary is "
        "located (another trial expected to save under 4%%)",
    )
    p.add_argument(
        "--epochs", type=int_at_least(0), default=1, help="fine-tuning epochs per trial (default 1)"
    )
    p.add_argument(
        "--fine-tune",
        choices=("mask", "lc", "distill"),
        help="how each trial recovers accuracy: mask fine-tuning (default; distill with "
        "--data-free), Condensa's L-C "
        "optimizer, or distillation from the dense model",
    )
    p.add_argument(
        "--quantize",
        choices=_QUANTIZE_CHOICES,
        default="none",
        help="quantization of the trials' LiteRT files and best.tflite (default none)",
    )
    p.add_argument(
        "--qat",
        choices=("none", "int8", "int4"),
        default="none",
        help="quantization-aware fine-tuning of every trial (kc.Quantize after the pruning; "
        "int4 stores 4-bit weights); needs --quantize int8 (default none)",
    )
    p.add_argument(
        "--prune",
        choices=("unstructured", "neuron", "filter", "structure", "str", "gates", "hspg"),
        default="unstructured",
        help="what the density keeps: weights (default; str: learned per-layer densities), "
        "neurons, filters, both, or channels learned under a FLOPs budget (gates) or by the "
        "HSPG optimizer (hspg); structured trials are shrunk (kc.shrink)",
    )
    p.add_argument(
        "--kernels",
        choices=("default", "builtin"),
        default="default",
        help="LiteRT kernels best.tflite must run on (builtin keeps sparse int8)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the oracle and fine-tuning")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a finished search in --out")
    p.add_argument(
        "--logdir",
        help="also write each trial to TensorBoard here: the HParams dashboard (hyperparameters, "
        "metrics, feasibility) and fine-tuning curves; needs the tensorboard package "
        "(view with: tensorboard --logdir DIR)",
    )

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a .keras model to a verified LiteRT file",
        description="Convert a .keras model to LiteRT (TFLite), load and run it once; with "
        "--data, compare its predictions with Keras on x_val.",
    )
    p.add_argument("model", help="the .keras model")
    p.add_argument(
        "--quantize",
        choices=_QUANTIZE_CHOICES,
        default="none",
        help="none (float32), float16, dynamic (int8 weights), int8 (needs --data)",
    )
    p.add_argument("--data", help=f"{_DATA}: x_train calibrates int8, x_val verifies")
    _image_size_option(p)
    p.add_argument("--no-sparse", action="store_true", help="no sparse weight encoding")
    p.add_argument(
        "--kernels",
        choices=("default", "builtin"),
        default="default",
        help="LiteRT kernels the file must run on (builtin keeps sparse int8)",
    )
    p.add_argument("--out", required=True, help="the .tflite file to write")

    p = sub.add_parser(
        "bench",
        parents=[common],
        help="latency of a .keras (Keras) or .tflite (LiteRT) model",
        description="Batch-1 latency: a .keras model with Keras on this machine's device, a "
        ".tflite file with LiteRT (p50, p90, p99, bytes, gzip bytes).",
    )
    p.add_argument("model", help="a .keras model or a .tflite file")
    p.add_argument("--data", help=f"{_DATA}: inputs from x_val (and accuracy for .keras)")
    _image_size_option(p)
    p.add_argument("--runs", type=int_at_least(1), default=200, help="timed runs (default 200)")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="LiteRT threads (default 1)")

    p = sub.add_parser(
        "analyze",
        parents=[common],
        help="per-layer sensitivity: accuracy drop per layer per density",
        description="Prune each layer alone (unstructured magnitude pruning; with --groups "
        "the filters or neurons of each group of coupled channels), at each density, in a "
        "copy of the model, and evaluate it on the validation data with no fine-tuning "
        "(kc.sensitivity). "
        "Prints a table of the accuracy drops with each layer's share of the parameters, "
        "FLOPs and latency, and writes OUT/sensitivity.csv and OUT/sensitivity.png "
        "(replaced if there).",
    )
    p.add_argument("model", help="the trained .keras model")
    p.add_argument("--data", required=True, help=f"{_DATA}; the validation split is evaluated")
    _image_size_option(p)
    p.add_argument(
        "--densities",
        type=densities,
        default=(0.1, 0.25, 0.5),
        help="comma-separated fractions of weights to keep (default 0.1,0.25,0.5)",
    )
    p.add_argument(
        "--groups",
        action="store_true",
        help="one row per group of coupled channels (convolutions added by a residual Add "
        "count as one), pruned by whole filters or neurons as kc.shrink removes them",
    )
    p.add_argument(
        "--quantize",
        choices=("int4", "int8", "float16"),
        help="quantize each layer alone to this dtype instead of pruning it (which layers "
        "can take 4 bits?): one drop column, drop@1",
    )
    p.add_argument(
        "--out",
        default="sensitivity_out",
        help="directory for sensitivity.csv and sensitivity.png, created if need be "
        "(default sensitivity_out)",
    )
    p.set_defaults(data_free=None)  # the --data of compress, without --data-free

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="LeNet-300-100 on digits: search, export, compare",
        description="Train LeNet-300-100 on scikit-learn's bundled digits (no download), "
        "search the prune density (fine-tuned with int4 weights) under a floor of the dense "
        "accuracy minus 1 point, export the best model to LiteRT (int4 weights, int8 "
        "activations), verify it and compare it with the dense model.",
    )
    p.add_argument(
        "--max-trials",
        type=int_at_least(1),
        default=10,
        help="trials at most (default 10; fewer once the boundary is located)",
    )
    p.add_argument(
        "--epochs", type=int_at_least(0), default=2, help="fine-tuning epochs per trial (default 2)"
    )
    p.add_argument(
        "--out", default="demo_out", help="output directory, replaced (default demo_out)"
    )
    p.add_argument(
        "--objective", choices=_OBJECTIVES, default="tflite_gzip_bytes", help=argparse.SUPPRESS
    )
    p.add_argument("--dense-epochs", type=int_at_least(1), default=20, help=argparse.SUPPRESS)
    return parser
