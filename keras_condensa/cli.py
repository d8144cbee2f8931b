"""The `keras-condensa` command line: compress, search, export, bench, demo.

This module parses arguments, calls a workflow and prints: `cli_checks`
validates and loads the inputs, `keras_condensa.workflows` and
`keras_condensa.search.run` do the work, `cli_output` formats it.

Exit status: 0 success; 2 bad usage or bad input (found before any work:
a missing or corrupt model, an `.npz` without the expected arrays or with
shapes or labels that do not fit the model, an unknown scheme word, an
existing output directory); 1 a failure while working; 130 interrupted
(Ctrl-C). Errors are one line on stderr, and no half-written output is left:
files are written to a temporary name and renamed.

Example:

```sh
keras-condensa compress model.keras --data data.npz --scheme "prune:0.1+int8" --epochs 2 \\
    --out small.keras
keras-condensa search model.keras --data data.npz --max-drop 0.01 --max-trials 10 --out run1
keras-condensa export small.keras --quantize int8 --data data.npz --out small.tflite
keras-condensa bench small.tflite
keras-condensa demo
```
"""

import argparse
import os
import sys

from keras_condensa import scheme_grammar
from keras_condensa.cli_checks import (
    UsageError,
    check_compress_args,
    check_paths,
    check_search_args,
    confidence,
    fraction,
    int_at_least,
    load_data,
    load_model,
    one_line,
)
from keras_condensa.cli_output import (
    Output,
    json_result,
    print_compressed,
    print_search_result,
    quiet_libraries,
    search_with_progress,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_QUANTIZE_CHOICES = ("none", "float16", "dynamic", "int8")
_OBJECTIVES = ("tflite_bytes", "tflite_gzip_bytes", "litert_latency_ms", "coded_bytes")
_OBJECTIVES += ("nonzero_params", "params", "keras_latency_ms")


def cmd_compress(args, out):
    """`compress`: apply a scheme, fine-tune, strip (and shrink), save."""
    from keras_condensa.workflows import SchemeError, compress

    try:
        scheme = scheme_grammar.parse_scheme(args.scheme)
    except scheme_grammar.SchemeSyntaxError as e:
        raise UsageError(str(e)) from None
    check_compress_args(args, scheme)
    model = load_model(args.model)
    data = load_data(args.data, model)
    method = "mask" if args.fine_tune == "none" else args.fine_tune
    try:
        result = compress(
            model,
            scheme,
            data,
            method=method,
            epochs=0 if args.fine_tune == "none" else args.epochs,
            batch_size=args.batch_size,
            shrink=args.shrink,
            out=args.out,
        )
    except SchemeError as e:
        raise UsageError(
            f"cannot compress {args.model} with {args.scheme!r} (--fine-tune {args.fine_tune}"
            f"{', --shrink' if args.shrink else ''}): {one_line(e)}"
        ) from None
    print_compressed(args, result, out)
    return EXIT_OK


def cmd_search(args, out):
    """`search`: the constrained search over prune density, with report and files."""
    from keras_condensa.search import run

    check_search_args(args)
    model = load_model(args.model)
    data = load_data(args.data, model)
    command_line = "`" + " ".join(["keras-condensa", *args.argv]) + "`"
    result = search_with_progress(
        out,
        command_line,
        model,
        data,
        args.out,
        model_name=args.model,
        scheme=run.density_scheme(args.prune, None if args.qat == "none" else args.qat),
        objective=args.objective,
        max_trials=args.max_trials,
        epochs=args.epochs,
        max_drop=args.max_drop,
        accuracy_floor=args.accuracy_floor,
        confidence=args.confidence,
        fine_tune=args.fine_tune,
        shrink=args.prune in run.STRUCTURED_KINDS,
        quantize=None if args.quantize == "none" else args.quantize,
        kernels=args.kernels,
        overwrite=args.overwrite,
        seed=args.seed,
        kind=args.prune,
    )
    print_search_result(result, out)
    out.emit_json({"command": "search", **json_result(result)})
    return EXIT_OK


def cmd_export(args, out):
    """`export`: a `.keras` model to a verified LiteRT file."""
    import tflite_export as te
    from keras_condensa.workflows.deploy import export_measured

    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and not args.data:
        raise UsageError("--quantize int8 needs --data (calibration inputs from x_train)")
    model = load_model(args.model)
    data = load_data(args.data, model, require_labels=False) if args.data else {}
    calibration = data.get("x_train", data.get("x_val")) if quantize == "int8" else None
    try:
        info = export_measured(
            model,
            args.out,
            quantize=quantize,
            sparse=not args.no_sparse,
            kernels=args.kernels,
            representative_data=calibration,
            verify_data=data.get("x_val", data.get("x_train")),
            benchmark=False,
        )
    except (te.UnsupportedOpsError, te.ConversionError) as e:
        raise RuntimeError(f"export failed: {one_line(e, 400)}") from None
    info = {
        "command": "export",
        "out": args.out,
        "quantize": args.quantize,
        "sparse": not args.no_sparse,
        **info,
    }
    out.result(
        f"wrote {args.out}: {info['bytes']:,} bytes ({info['gzip_bytes']:,} gzip), "
        f"{info['sparse_tensors']} sparse tensors, ops {', '.join(info['ops'])}"
        + (f"; fallback: {info['fallback']}" if info["fallback"] else "")
    )
    if "top1_agreement" in info:
        out.result(
            f"LiteRT against Keras: top-1 agreement {info['top1_agreement']:.4f}, "
            f"max abs error {info['max_abs_error']:.4g}"
        )
    out.emit_json(info)
    return EXIT_OK


def cmd_bench(args, out):
    """`bench`: latency of a `.keras` model (Keras) or a `.tflite` file (LiteRT)."""
    import numpy as np

    path = args.model
    if path.endswith(".tflite"):
        import tflite_export as te

        try:
            timing = te.benchmark(path, num_threads=args.threads, runs=args.runs)
        except te.InvalidTFLiteFileError as e:
            raise UsageError(f"cannot load {path}: {one_line(e)}") from None
        info = {
            "command": "bench",
            "model": path,
            "runtime": "litert",
            "kernels": timing.kernels,
            "threads": args.threads,
            "runs": timing.runs,
            "p50_ms": timing.p50_ms,
            "p90_ms": timing.p90_ms,
            "p99_ms": timing.p99_ms,
            "bytes": int(timing.bytes),
            "gzip_bytes": int(timing.gzip_bytes),
        }
        out.result(
            f"{path}: LiteRT ({timing.kernels}, {args.threads} thread) p50 {timing.p50_ms:.4f} ms, "
            f"p90 {timing.p90_ms:.4f} ms, p99 {timing.p99_ms:.4f} ms; {timing.bytes:,} bytes, "
            f"{timing.gzip_bytes:,} gzip bytes"
        )
    else:
        import keras

        from keras_condensa.bench import keras_latency_ms
        from keras_condensa.workflows.measure import model_accuracy

        model = load_model(path)
        data = load_data(args.data, model, require_labels=False) if args.data else {}
        x = data.get("x_val", data.get("x_train"))
        if x is None:
            shape = tuple(1 if d is None else d for d in model.inputs[0].shape[1:])
            x = np.zeros((1, *shape), dtype="float32")
        timing = keras_latency_ms(model, x, runs=args.runs)
        backend = keras.backend.backend()
        info = {
            "command": "bench",
            "model": path,
            "runtime": f"keras ({backend})",
            "runs": args.runs,
            **timing,
            "bytes": int(os.path.getsize(path)),
        }
        if "y_val" in data:
            info["val_accuracy"] = model_accuracy(model, data["x_val"], data["y_val"])
        out.result(
            f"{path}: Keras ({backend}, batch 1) p50 {timing['p50_ms']:.4f} ms, "
            f"p90 {timing['p90_ms']:.4f} ms, p99 {timing['p99_ms']:.4f} ms; "
            f"{info['bytes']:,} bytes"
            + (f"; val accuracy {info['val_accuracy']:.4f}" if "val_accuracy" in info else "")
        )
    out.emit_json(info)
    return EXIT_OK


def cmd_demo(args, out):
    """`demo`: LeNet-300-100 on digits, searched, exported and compared (`keras_condensa.demo`)."""
    from keras_condensa import demo

    return demo.run(args, out)


def build_parser():
    """The `argparse` parser of `keras-condensa` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
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
        "Data files (.npz) hold x_train, y_train, x_val, y_val (optionally x_test, y_test).",
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
    p.add_argument("--data", required=True, help=".npz with x_train, y_train, x_val, y_val")
    p.add_argument("--scheme", required=True, help=scheme_grammar.help_text())
    p.add_argument(
        "--epochs", type=int_at_least(0), default=1, help="fine-tuning epochs (default 1)"
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=32, help=argparse.SUPPRESS)
    p.add_argument(
        "--fine-tune",
        choices=("mask", "lc", "distill", "none"),
        default="mask",
        help="mask: fine-tune with the masks enforced (default); lc: Condensa's L-C optimizer "
        "(kc.LC, --epochs of training); distill: mask fine-tuning that also learns from the "
        "dense model's soft targets (kc.Distiller); none: one-shot, no training",
    )
    p.add_argument(
        "--shrink",
        action="store_true",
        help="remove the neurons and filters that structured pruning zeroed (kc.shrink): "
        "a smaller, faster model instead of one full of zeros",
    )
    p.add_argument("--out", required=True, help="the compressed .keras model to write")
    p.set_defaults(run=cmd_compress)

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
        required=True,
        help=".npz with x_train, y_train, x_val, y_val, and optionally x_test, y_test (the "
        "held-out check: does the returned model meet the floor on data the search never saw?)",
    )
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
        default="mask",
        help="how each trial recovers accuracy: mask fine-tuning (default), Condensa's L-C "
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
    p.set_defaults(run=cmd_search)

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
    p.add_argument("--data", help=".npz: x_train calibrates int8, x_val verifies")
    p.add_argument("--no-sparse", action="store_true", help="no sparse weight encoding")
    p.add_argument(
        "--kernels",
        choices=("default", "builtin"),
        default="default",
        help="LiteRT kernels the file must run on (builtin keeps sparse int8)",
    )
    p.add_argument("--out", required=True, help="the .tflite file to write")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "bench",
        parents=[common],
        help="latency of a .keras (Keras) or .tflite (LiteRT) model",
        description="Batch-1 latency: a .keras model with Keras on this machine's device, a "
        ".tflite file with LiteRT (p50, p90, p99, bytes, gzip bytes).",
    )
    p.add_argument("model", help="a .keras model or a .tflite file")
    p.add_argument("--data", help=".npz; inputs from x_val (and accuracy for .keras)")
    p.add_argument("--runs", type=int_at_least(1), default=200, help="timed runs (default 200)")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="LiteRT threads (default 1)")
    p.set_defaults(run=cmd_bench)

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
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv=None):
    """Runs `keras-condensa` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv: the arguments, without the program name.

    Returns:
        The exit status: 0 success, 1 failure, 2 bad usage or input, 130
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors.
        return int(e.code or 0)
    args.argv = argv
    quiet_libraries()
    out = Output(quiet=args.quiet, as_json=args.json)
    try:
        check_paths(args)
        return args.run(args, out)
    except UsageError as e:
        print(f"keras-condensa {args.command}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command not in ("search", "demo"):
            print(f"keras-condensa {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # One line, not a traceback; KERAS_CONDENSA_DEBUG=1 re-raises.
        if os.environ.get("KERAS_CONDENSA_DEBUG"):
            raise
        print(
            f"keras-condensa {args.command}: failed: {type(e).__name__}: {one_line(e, 400)}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
