"""The command line's validation layer: every subcommand's arguments, checked before any work.

Models are loaded and checked here too (`load_model`), and so are the
arrays of `--data` (`check_data_arrays`; `keras_condensa.cli_data` reads
them). Single values are checked by argparse types (`int_at_least`,
`fraction`, `image_size`) as the command line is parsed; files by
`check_paths`, from one table of what each subcommand reads and writes.
Every failure is a `UsageError` or an argparse error, and the command line
exits with status 2.
"""

import argparse
import os
import tempfile

_DATA_KEYS = ("x_train", "y_train", "x_val", "y_val")


class UsageError(Exception):
    """Bad usage or bad input: exit status 2, one line on stderr."""


# Per subcommand: the input files (attribute, what it is) and the output
# (attribute, extension of the file written, or None for a directory).
_INPUTS = {
    "compress": (("model", "model"), ("data", "data")),
    "search": (("model", "model"), ("data", "data")),
    "export": (("model", "model"), ("data", "data")),
    "bench": (("model", "model"), ("data", "data")),
    "analyze": (("model", "model"), ("data", "data")),
    "demo": (),
}
_OUTPUTS = {
    "compress": ("out", (".keras", ".kcz")),
    "search": ("out", None),
    "export": ("out", (".tflite",)),
    "analyze": ("out", None),
    "demo": ("out", None),
}
_WRITES = {
    ".keras": "a .keras model",
    ".kcz": "an entropy-coded model (.kcz, kc.codec)",
    ".tflite": "a LiteRT (.tflite) file",
}


def int_at_least(minimum):
    """An argparse type: an integer >= `minimum`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def confidence(text):
    """An argparse type: a probability in [0.5, 1) (`--confidence`)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.5 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be a probability in [0.5, 1), e.g. 0.9 (how sure the search must be that "
            f"the model it returns meets the floor), got {text}"
        )
    return value


def image_size(text):
    """An argparse type: `H,W` (or `HxW`), two positive integers (`--image-size`)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(
            f"must be the height and width of the images in pixels, e.g. 224,224; got {text!r}"
        )
    return size


def function_reference(text):
    """The `(module or .py file, function)` of a `--data module:function`, or None.

    The function may be a dotted attribute path (`loaders:Digits.load`); a
    Windows path (`C:\\data`) is no reference.

    Example:

    >>> function_reference("mypkg.data:load")
    ('mypkg.data', 'load')
    >>> function_reference("tools/data.py:load")
    ('tools/data.py', 'load')
    >>> function_reference("data.npz") is None
    True
    """
    target, colon, name = text.rpartition(":")
    if not colon or not target or not all(p.isidentifier() for p in name.split(".")):
        return None
    if target.endswith(".py") or all(p.isidentifier() for p in target.split(".")):
        return target, name
    return None


def _check_data_source(path):
    """Raises unless a `--data` is an existing file or directory, or a `module:function`."""
    if os.path.exists(path) or function_reference(path) is not None:
        return
    raise UsageError(
        f"--data {path}: not found; give an .npz file, a directory of images in class folders, "
        "or module:function (e.g. mypkg.data:load or path/to/data.py:load)"
    )


def fraction(text):
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def densities(text):
    """An argparse type: comma-separated fractions in (0, 1] (`--densities 0.1,0.25,0.5`)."""
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v <= 1 for v in values):  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"must be comma-separated fractions of weights to keep, each in (0, 1], e.g. "
            f"0.1,0.25,0.5; got {text!r}"
        )
    return values


def _check_writable(directory, flag):
    """Raises unless files can be created in the existing `directory`."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag}: cannot write to {directory} (permission denied); choose a writable location"
        )
    try:  # os.access cannot see read-only mounts under root, ACLs or full quotas.
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(
            f"{flag}: cannot write to {directory} ({e.strerror}); choose a writable location"
        ) from None


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output(args, attr, extension):
    path = getattr(args, attr)
    flag = f"--{attr}"
    for name, _ in _INPUTS[args.command]:
        source = getattr(args, name, None)
        if source and _same_file(path, source):
            raise UsageError(
                f"{flag} {path} is the input {name} file; writing there would destroy it. "
                f"Choose another {flag}"
            )
    if extension is None:  # a directory, created if need be
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{flag} {path} exists and is not a directory")
        existing = os.path.abspath(path)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
        _check_writable(existing, flag)
        return
    if not path.lower().endswith(extension):
        writes = " or ".join(_WRITES[e] for e in extension)
        raise UsageError(
            f"{flag} {path}: {args.command} writes {writes}; give a file name "
            f"ending in {' or '.join(extension)}"
        )
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: {parent} is not an existing directory")
    _check_writable(parent, flag)


def check_paths(args):
    """Checks a parsed command line's files before any work.

    Inputs must exist (`--data` may also be a directory or a
    `module:function`); an output must not be an input, must have the
    extension of what is written, and its directory must be writable.

    Raises:
        UsageError: naming the argument, the path and the fix.
    """
    for name, kind in _INPUTS[args.command]:
        path = getattr(args, name, None)
        if path is not None and kind == "data":
            _check_data_source(path)
        elif path is not None and not os.path.isfile(path):
            what = "not a file" if os.path.exists(path) else "not found"
            raise UsageError(f"{kind} file {what}: {path}")
    if args.command in _OUTPUTS:
        _check_output(args, *_OUTPUTS[args.command])


def one_line(error, limit=200):
    """An error's text on one line, cut to `limit` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_fine_tune(args):
    """`--fine-tune` by default: `distill` with `--data-free`, else `mask`."""
    if args.fine_tune is None:
        args.fine_tune = "distill" if args.data_free else "mask"


def check_compress_args(args, scheme):
    """Checks `compress` options against each other and the parsed scheme.

    Raises:
        UsageError: `--fine-tune lc` without epochs, or `--shrink` with a
            scheme that trains int8/int4 quantizers.
    """
    _default_fine_tune(args)
    if args.fine_tune == "lc" and not args.epochs:
        raise UsageError("--fine-tune lc trains: give --epochs >= 1 (or --fine-tune none)")
    if args.shrink and any(
        getattr(op, "dtype", None) in ("int8", "int4") for op in scheme.operators()
    ):
        raise UsageError(
            "--shrink rebuilds plain Keras layers and would drop the int8/int4 quantizers the "
            "scheme trains; compress without --shrink, or shrink a float scheme"
        )


def check_search_args(args):
    """Checks `search` options against each other.

    Raises:
        UsageError: `--qat` with a structured `--prune` or without `--quantize int8`;
            a `--logdir` inside `--out`, a file, or not writable.
    """
    _default_fine_tune(args)
    if args.qat != "none" and args.prune != "unstructured":
        raise UsageError(
            f"--prune {args.prune} shrinks every trial's model, which drops the quantizers "
            f"--qat {args.qat} trains; use --quantize int8 without --qat for a structured search"
        )
    if args.qat != "none" and args.quantize != "int8":
        raise UsageError(
            f"--qat {args.qat} fine-tunes with quantized weights; export them with "
            f"--quantize int8 (got --quantize {args.quantize})"
        )
    if args.logdir is not None:
        _check_logdir(args.logdir, args.out)


def _check_logdir(logdir, out):
    """`--logdir` is a directory (made if need be) outside `--out`, in a writable place."""
    logdir, out = os.path.abspath(logdir), os.path.abspath(out)
    if logdir == out or logdir.startswith(out + os.sep):
        raise UsageError(
            f"--logdir {logdir} is inside --out {out}, which holds only the search's own files "
            "(it could not be resumed); choose a directory outside it, e.g. logs/"
        )
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise UsageError(f"--logdir {logdir} is a file; TensorBoard logs need a directory")
    existing = logdir
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    _check_writable(existing, "--logdir")


# ----------------------------------------------------------------------
# Inputs.


def load_model(path):
    """Loads a `.keras` or `.kcz` model, with keras_condensa's layers registered.

    Raises:
        UsageError: the file is missing, not a `.keras` or `.kcz` file, or corrupt.
    """
    import keras

    import keras_condensa  # noqa: F401  Registers the wrapper and quantizers.

    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {path}")
    if path.lower().endswith(".kcz"):
        from keras_condensa import codec

        try:
            return codec.load(path)
        except codec.CodecError as e:
            raise UsageError(f"cannot load model {path}: {one_line(e)}") from None
    if path.endswith(".keras"):
        _check_keras_archive(path)
    try:
        model = keras.saving.load_model(path, compile=True)
    except Exception as e:  # Keras raises many types for a bad archive.
        raise UsageError(f"cannot load model {path}: {type(e).__name__}: {one_line(e)}") from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{path} does not hold a keras.Model (found {type(model).__name__})")
    return model


def _check_keras_archive(path):
    """Raises unless `path` is a whole `.keras` archive (Keras says "File not found" otherwise)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UsageError(
            f"{path} is not a valid .keras archive: it is truncated or corrupt ({one_line(e)}); "
            "save the model again"
        ) from None
    if damaged is not None or "config.json" not in names:
        what = f"its member {damaged} is damaged" if damaged else "it has no config.json"
        raise UsageError(f"{path} is not a valid .keras archive: {what}; save the model again")


# ----------------------------------------------------------------------
# The arrays of `--data` (read by `keras_condensa.cli_data`).


def check_data_arrays(label, data, model=None, require_labels=True):
    """Checks the arrays of a `--data` against each other and `model`.

    Labels are integers in `[0, outputs)` or one-hot rows as wide as the
    model's output.

    Args:
        label: how errors name the source (a path, or `--data SOURCE`).
        data: a dict of arrays: `x_train`, `y_train`, `x_val`, `y_val`, and
            optionally `x_test`, `y_test`.
        model: the model the data must fit (input shape, output width).
        require_labels: whether all four arrays are needed (else `x_train`
            or `x_val` suffices).

    Returns:
        The dict, as numpy arrays (float64 inputs as float32).

    Raises:
        UsageError: missing arrays, shapes or labels that do not fit.
    """
    import numpy as np

    from keras_condensa.compiling import check_finite_data

    data = {k: np.asarray(v) for k, v in data.items()}
    needed = _DATA_KEYS if require_labels else ()
    missing = [k for k in needed if k not in data]
    if not require_labels and "x_train" not in data and "x_val" not in data:
        missing = ["x_train or x_val"]
    if missing:
        raise UsageError(
            f"{label} lacks the arrays {', '.join(missing)}; --data holds "
            f"{', '.join(_DATA_KEYS)} (optionally x_test, y_test). Found: {sorted(data) or 'none'}"
        )
    if require_labels and ("x_test" in data) != ("y_test" in data):
        given, lacking = ("x_test", "y_test") if "x_test" in data else ("y_test", "x_test")
        raise UsageError(
            f"{label} holds {given} without {lacking}: the held-out check needs both (or neither)"
        )
    for split in ("train", "val", "test"):
        x, y = data.get(f"x_{split}"), data.get(f"y_{split}")
        if x is None:
            continue
        if x.ndim < 1 or len(x) == 0:
            raise UsageError(f"{label}: x_{split} is empty")
        if not np.issubdtype(x.dtype, np.number):
            raise UsageError(f"{label}: x_{split} is not numeric (dtype {x.dtype})")
        for name, array in ((f"x_{split}", x), (f"y_{split}", y)):
            try:
                check_finite_data(name, array if array is not None else np.zeros(0))
            except ValueError as e:
                raise UsageError(f"{label}: {e}") from None
        data[f"x_{split}"] = x.astype("float32") if x.dtype == np.float64 else x
        if y is not None and len(y) != len(x):
            raise UsageError(f"{label}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if model is not None:
            _check_fits(label, model, split, x, y)
    return data


def shape_text(shape):
    """A shape with `?` for unknown sizes: `(?, 8, 8, 1)`."""
    return str(tuple("?" if d is None else d for d in shape))


def _check_fits(label, model, split, x, y):
    import numpy as np

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UsageError(
            f"the command line handles models with one input and one output; this one has "
            f"{len(model.inputs)} and {len(model.outputs)}"
        )
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(x.shape[1:])
    mismatch = len(expected) != len(got) or any(
        e is not None and e != g for e, g in zip(expected, got, strict=False)
    )
    if mismatch:
        raise UsageError(
            f"{label}: x_{split} has samples of shape {got} but the model expects "
            f"{shape_text(expected)}"
        )
    if y is None:
        return
    outputs = model.outputs[0].shape[-1]
    if y.ndim >= 2 and y.shape[-1] > 1:
        if outputs is not None and y.shape[-1] != outputs:
            raise UsageError(
                f"{label}: y_{split} has one-hot rows of width {y.shape[-1]} but the model "
                f"has {outputs} outputs"
            )
        return
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise UsageError(f"{label}: y_{split} must hold finite numeric labels")
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise UsageError(f"{label}: y_{split} must hold non-negative integer labels")
    classes = max(int(outputs or 1), 2)  # One sigmoid unit: labels 0 and 1.
    top = int(np.max(y))
    if top >= classes:
        raise UsageError(
            f"{label}: y_{split} has label {top} but the model has {outputs} output"
            f"{'s' if outputs != 1 else ''} (labels must be < {classes})"
        )
