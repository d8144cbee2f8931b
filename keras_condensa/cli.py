"""The `keras-condensa` command line: compress, search, export, bench, analyze, demo.

This module runs a command and prints: `cli_parser` parses, `cli_checks`
validates the arguments and loads the model, `cli_data` loads `--data`,
`keras_condensa.workflows` and `keras_condensa.search.run` do the work,
`cli_output` formats it.

Exit status: 0 success; 2 bad usage or bad input (found before any work:
a missing or corrupt model, data without the expected arrays or with
shapes or labels that do not fit the model, an unknown scheme word, an
existing output directory); 1 a failure while working; 130 interrupted
(Ctrl-C). Errors are one line on stderr, and no half-written output is left:
files are written to a temporary name and renamed. What the libraries print
(TensorFlow, the TFLite converter, absl, warnings) goes to the command's log
file (`cli_output.log_path`), not the terminal, unless `--verbose`.

Example:

```sh
keras-condensa compress model.keras --data data.npz --scheme "prune:0.1+int8" --epochs 2 \\
    --out small.keras
keras-condensa search model.keras --data data.npz --max-drop 0.01 --max-trials 10 --out run1
keras-condensa export small.keras --quantize int8 --data data.npz --out small.tflite
keras-condensa bench small.tflite
keras-condensa analyze model.keras --data data.npz --densities 0.1,0.25,0.5 --out sens
keras-condensa demo
```
"""

import os
import sys

from keras_condensa import scheme_grammar
from keras_condensa.cli_checks import (
    UsageError,
    check_compress_args,
    check_paths,
    check_search_args,
    load_model,
    one_line,
)
from keras_condensa.cli_data import command_data, optional_data
from keras_condensa.cli_output import (
    CommandLog,
    Output,
    json_result,
    print_compressed,
    print_search_result,
    search_with_progress,
)
from keras_condensa.cli_parser import build_parser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def cmd_compress(args, out):
    """`compress`: apply a scheme, fine-tune, strip (and shrink), save."""
    from keras_condensa.workflows import SchemeError, compress

    try:
        scheme = scheme_grammar.parse_scheme(args.scheme)
    except scheme_grammar.SchemeSyntaxError as e:
        raise UsageError(str(e)) from None
    check_compress_args(args, scheme)
    model = load_model(args.model)
    data = command_data(args, model)
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
            recalibrate=not args.data_free,  # synthetic inputs would skew the statistics
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
    data = command_data(args, model)
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
        recalibrate_batchnorm=False if args.data_free else None,
        logdir=args.logdir,
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
    data = optional_data(args, model)
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
        data = optional_data(args, model)
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


def cmd_analyze(args, out):
    """`analyze`: per-layer sensitivity (`kc.sensitivity`): a table, a CSV and a plot."""
    from keras_condensa.files import write_atomically
    from keras_condensa.sensitivity import sensitivity

    options = {"densities": args.densities, "groups": args.groups}
    if args.quantize:
        if args.groups:
            raise UsageError("--quantize measures single layers; leave out --groups")
        from keras_condensa.operators import Quantize

        dtype = args.quantize
        options = {
            # Weights only: activation ranges are learned in fine-tuning, which this skips.
            "scheme_fn": lambda name, _: Quantize(dtype, activations=False, include=[name]),
            "densities": (1.0,),
        }
    model = load_model(args.model)
    data = command_data(args, model)
    try:
        result = sensitivity(model, data=(data["x_val"], data["y_val"]), **options)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot analyze {args.model}: {one_line(e, 300)}") from None
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "sensitivity.csv")
    png_path = os.path.join(args.out, "sensitivity.png")
    write_atomically(csv_path, result.to_csv())
    out.result(result.to_text())
    try:
        result.plot(png_path, title=f"Sensitivity of {os.path.basename(args.model)}")
    except ImportError as e:  # matplotlib is the [report] extra: the table and CSV stand
        out.result(f"wrote {csv_path}; no plot: {e}")
        png_path = None
    else:
        out.result(f"wrote {csv_path} and {png_path}")
    out.emit_json(
        {
            "command": "analyze",
            "model": args.model,
            "dense_accuracy": result.dense_accuracy,
            "densities": list(result.densities),
            "rows": result.rows,
            "csv": csv_path,
            "png": png_path,
        }
    )
    return EXIT_OK


def cmd_demo(args, out):
    """`demo`: LeNet-300-100 on digits, searched, exported and compared (`keras_condensa.demo`)."""
    from keras_condensa import demo

    return demo.run(args, out)


_COMMANDS = {
    "compress": cmd_compress,
    "search": cmd_search,
    "export": cmd_export,
    "bench": cmd_bench,
    "analyze": cmd_analyze,
    "demo": cmd_demo,
}


def main(argv=None):
    """Runs `keras-condensa` with `argv` (default: `sys.argv[1:]`).

    Args:
        argv: the arguments, without the program name.

    Returns:
        The exit status: 0 success, 1 failure, 2 bad usage or input, 130
        interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    with CommandLog(argv) as log:  # what the libraries print goes to a log (unless --verbose)
        return _run(argv, log)


def _run(argv, log):
    parser = build_parser()
    try:
        with log.to_terminal():
            args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors.
        return int(e.code or 0)
    args.argv = argv
    log.args = args  # it picks the log file
    out = Output(quiet=args.quiet, as_json=args.json)
    try:
        check_paths(args)
        return _COMMANDS[args.command](args, out)
    except UsageError as e:
        out.error(f"keras-condensa {args.command}: error: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command not in ("search", "demo"):
            out.error(f"keras-condensa {args.command}: interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # One line, not a traceback; KERAS_CONDENSA_DEBUG=1 re-raises.
        if os.environ.get("KERAS_CONDENSA_DEBUG"):
            raise
        out.error(
            f"keras-condensa {args.command}: failed: {type(e).__name__}: {one_line(e, 400)}"
            f"{log.hint()}"
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
