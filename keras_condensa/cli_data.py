"""The command line's `--data`: an `.npz`, a directory of images, or a `module:function`.

Whatever the source, the commands get one dict of numpy arrays, the layout of
a `--data` `.npz`: `x_train`, `y_train`, `x_val`, `y_val` (and optionally
`x_test`, `y_test`), checked against the model (input shape, labels within
its outputs) before any work.

- **`.npz`**: the arrays by those names.
- **A directory of images in class folders** (`DIR/cat/1.png`, `DIR/dog/2.jpg`),
  read with `keras.utils.image_dataset_from_directory`: integer labels, one
  per class folder in alphanumeric order; pixel values 0-255 as read (a model
  that expects [0, 1] needs its own `Rescaling` layer). With `train/` and
  `val/` (or `validation/`) subfolders (and optionally `test/`), those are the
  splits; otherwise a fixed fifth of the images (seed 0) is the validation
  split. Images are resized to `--image-size`, by default the model's input
  size, and read in the model's channels (1 grayscale, 3 RGB, 4 RGBA).
- **`module:function`** (`mypkg.data:load`, or a file: `path/to/data.py:load`):
  the function is called without arguments and returns `(train, val)` or
  `(train, val, test)`, each `(x, y)` arrays, a `tf.data.Dataset` or another
  iterable of `(x, y)` batches (a PyTorch `DataLoader`); or a dict of the
  `.npz` layout. A module name is imported with the current directory on the
  path.

Everything is read into memory: the commands fine-tune and evaluate on
arrays. A source of more than `MAX_BYTES` is refused.

Example:

```sh
keras-condensa compress model.keras --data photos/ --scheme prune:0.2 --out small.keras
keras-condensa search model.keras --data mypkg.data:load --max-drop 0.01 --out run1
```
"""

import contextlib
import importlib
import importlib.util
import os
import sys

from keras_condensa.cli_checks import (
    UsageError,
    check_data_arrays,
    function_reference,
    one_line,
    shape_text,
)

#: The most bytes of arrays `--data` may load (they are held in memory).
MAX_BYTES = 8 * 2**30
#: The fraction of an image directory without `train/` and `val/` kept for validation.
VALIDATION_SPLIT = 0.2
_SPLIT_SEED = 0
_VAL_FOLDERS = ("val", "validation")
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
_RETURNS = (
    "(train, val) or (train, val, test), each (x, y) arrays, a tf.data.Dataset or an "
    "iterable of (x, y) batches; or a dict with x_train, y_train, x_val, y_val"
)


def load_data(source, model=None, require_labels=True, image_size=None):
    """Loads a `--data` and checks it fits `model`.

    Args:
        source: an `.npz` file, a directory of images in class folders, or
            `module:function` (see the module's docstring).
        model: the model the data must fit (input shape, output width).
        require_labels: whether training and validation arrays with labels
            are needed (else `x_train` or `x_val` suffices).
        image_size: `(height, width)` the images of a directory are
            resized to (default: the model's input size).

    Returns:
        A dict of numpy arrays: `x_train`, `y_train`, `x_val`, `y_val`, and
        `x_test`, `y_test` when the source has them.

    Raises:
        UsageError: naming `--data` and the fix: a source that is missing,
            unreadable or empty, a function that cannot be imported or
            returns something else, arrays missing, shapes or labels that
            do not fit the model.
    """
    if os.path.isdir(source):
        data = _image_directory(source, model, image_size)
        return check_data_arrays(f"--data {source}", data, model, require_labels)
    if image_size is not None:
        raise UsageError(
            f"--image-size applies to a directory of images; --data {source} is not one "
            "(drop --image-size)"
        )
    if os.path.isfile(source):
        return check_data_arrays(source, _npz(source), model, require_labels)
    if function_reference(source) is not None:
        data = _from_function(source, model)
        return check_data_arrays(f"--data {source}", data, model, require_labels)
    raise UsageError(
        f"--data {source}: not found; give an .npz file, a directory of images in class "
        "folders, or module:function (e.g. mypkg.data:load or path/to/data.py:load)"
    )


def optional_data(args, model):
    """The `--data` of `export` and `bench` (labels optional), or `{}` without one."""
    if not args.data:
        return {}
    image_size = getattr(args, "image_size", None)
    return load_data(args.data, model, require_labels=False, image_size=image_size)


def command_data(args, model):
    """The data of `compress` or `search`: `--data`, or with `--data-free` synthesized.

    With `--data-free METHOD`, training inputs are synthesized from `model`
    (`keras_condensa.workflows.synthetic`); a `--data` then only gives real
    validation (and test) arrays, and without it accuracy is agreement
    with the dense model on synthetic inputs. `--fine-tune` defaults to
    `distill` with `--data-free`, else to `mask` (set by the `check_*_args`).

    Raises:
        UsageError: no `--data` without `--data-free`, bad data, or a model
            the method cannot synthesize for (naming the method that can).
    """
    image_size = getattr(args, "image_size", None)
    if not args.data_free:
        if args.data is None:
            raise UsageError(
                "--data is required: an .npz with x_train, y_train, x_val, y_val, a directory of "
                "images in class folders, or module:function (or --data-free to fine-tune on "
                "inputs synthesized from the model)"
            )
        return load_data(args.data, model, image_size=image_size)
    from keras_condensa.workflows.synthetic import synthetic_data

    data = None
    if args.data:
        data = load_data(args.data, model, require_labels=False, image_size=image_size)
    try:
        return synthetic_data(model, data, {"method": args.data_free}, getattr(args, "seed", 0))
    except ValueError as e:
        # The library names its methods as arguments; the command line as option values.
        text = one_line(e, 300).replace("method='", "--data-free '")
        raise UsageError(f"--data-free {args.data_free}: {text}") from None


# ----------------------------------------------------------------------
# The sources.


def _npz(path):
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except Exception as e:
        raise UsageError(
            f"cannot read data {path}: {type(e).__name__}: {one_line(e)} (a --data file is an "
            ".npz; a directory of images and module:function are the other choices)"
        ) from None


def _image_directory(directory, model, image_size):
    """The splits of an image directory as arrays (see the module's docstring)."""
    flag = f"--data {directory}"
    size, color_mode, data_format = _image_layout(directory, model, image_size)
    splits = _split_folders(directory)
    classes = _class_folders(splits["train"] if splits else directory)
    if len(classes) < 2:
        found = f"one class folder ({classes[0]})" if classes else "no class folders"
        raise UsageError(
            f"{flag}: found {found}; a classifier needs images in two or more class folders "
            f"({directory}/CLASS/IMAGE.png, or train/CLASS/... and val/CLASS/...)"
        )
    try:  # Keras prints "Using N files for training." on stdout, which belongs to the results.
        import keras

        read = keras.utils.image_dataset_from_directory
        options = dict(
            label_mode="int",
            color_mode=color_mode,
            image_size=size,
            batch_size=64,
            data_format=data_format,
            verbose=False,
        )
        if splits is None:
            with contextlib.redirect_stdout(sys.stderr):
                train, val = read(
                    directory,
                    validation_split=VALIDATION_SPLIT,
                    subset="both",
                    seed=_SPLIT_SEED,
                    **options,
                )
            datasets = {"train": train, "val": val}
        else:
            datasets = {"train": read(splits["train"], shuffle=False, **options)}
            classes = datasets["train"].class_names
            for name in ("val", "test"):
                if name in splits:
                    datasets[name] = read(
                        splits[name], shuffle=False, class_names=classes, **options
                    )
    except ImportError as e:
        raise UsageError(
            f"{flag}: reading images needs TensorFlow (pip install 'keras-condensa[export]'): "
            f"{one_line(e)}"
        ) from None
    except ValueError as e:  # no images, or class folders that differ between the splits
        raise UsageError(
            f"{flag}: {one_line(e, 300)}; the images go in one folder per class "
            f"({directory}/CLASS/IMAGE.png, or train/CLASS/... and val/CLASS/...)"
        ) from None
    outputs = model.outputs[0].shape[-1] if model is not None else None
    if outputs is not None and len(classes) > max(outputs, 2):
        raise UsageError(
            f"{flag}: {len(classes)} class folders ({', '.join(classes[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) but the model has {outputs} outputs"
        )
    data = {}
    for name, dataset in datasets.items():
        if not dataset.file_paths:
            raise UsageError(f"{flag}: no images for the {name} split; add images or folders")
        channels = {"grayscale": 1, "rgb": 3, "rgba": 4}[color_mode]
        _check_size(flag, len(dataset.file_paths) * size[0] * size[1] * channels * 4)
        data[f"x_{name}"], data[f"y_{name}"] = _batches_to_arrays(flag, name, dataset, model)
    return data


def _class_folders(directory):
    return sorted(e.name for e in os.scandir(directory) if e.is_dir())


def _split_folders(directory):
    """`{"train": path, "val": path[, "test": path]}` when `directory` has them, else None."""
    path = os.path.join(directory, "train")
    vals = [os.path.join(directory, v) for v in _VAL_FOLDERS]
    vals = [v for v in vals if os.path.isdir(v)]
    if not os.path.isdir(path) or not vals:
        return None
    splits = {"train": path, "val": vals[0]}
    if os.path.isdir(os.path.join(directory, "test")):
        splits["test"] = os.path.join(directory, "test")
    return splits


def _image_layout(directory, model, image_size):
    """`(size, color_mode, data_format)` images are read with, for `model`."""
    import keras

    data_format = keras.config.image_data_format()
    if model is None:
        if image_size is None:
            raise UsageError(f"--data {directory}: give --image-size H,W for the images")
        return tuple(image_size), "rgb", data_format
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise UsageError(
            f"--data {directory} is a directory of images, but the model takes inputs of shape "
            f"{shape_text(shape)}, not images (height, width, channels); give --data as an .npz "
            "or module:function"
        )
    if data_format == "channels_first":
        channels, height, width = shape
    else:
        height, width, channels = shape
    if channels not in (None, *_COLOR_MODES):
        raise UsageError(
            f"--data {directory}: the model takes images of {channels} channels; images are "
            "read as 1 (grayscale), 3 (RGB) or 4 (RGBA) channels"
        )
    model_size = f"{'?' if height is None else height}x{'?' if width is None else width}"
    if image_size is None:
        if height is None or width is None:
            raise UsageError(
                f"--data {directory}: the model takes images of any size ({model_size}); give "
                "--image-size H,W, the size the images are resized to (e.g. --image-size 224,224)"
            )
        image_size = (height, width)
    elif any(m is not None and m != s for m, s in zip((height, width), image_size, strict=True)):
        raise UsageError(
            f"--image-size {image_size[0]},{image_size[1]} does not fit the model, which takes "
            f"{model_size} images; drop --image-size (images are resized to the model's input "
            f"size) or give --image-size {height},{width}"
        )
    return tuple(image_size), _COLOR_MODES.get(channels, "rgb"), data_format


def _from_function(source, model):
    """Calls a `module:function` and converts its splits to arrays."""
    flag = f"--data {source}"
    target, name = function_reference(source)
    module = _import(flag, target)
    function = module
    for part in name.split("."):
        function = getattr(function, part, None)
        if function is None:
            public = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            listed = ", ".join(public[:10]) + (", ..." if len(public) > 10 else "")
            raise UsageError(f"{flag}: {target} has no {name}; it defines {listed or 'nothing'}")
    if not callable(function):
        raise UsageError(f"{flag}: {target}.{name} is a {type(function).__name__}, not a function")
    try:
        result = function()
    except Exception as e:
        raise UsageError(
            f"{flag}: {name}() raised {type(e).__name__}: {one_line(e)} (it is called without "
            "arguments)"
        ) from None
    if isinstance(result, dict):
        return {k: _numpy(v) for k, v in result.items()}
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        got = type(result).__name__
        if isinstance(result, (tuple, list)):
            got = f"a {got} of {len(result)}"
        raise UsageError(f"{flag}: {name}() must return {_RETURNS}; it returned {got}")
    if all(hasattr(part, "shape") for part in result):
        raise UsageError(
            f"{flag}: {name}() returned {len(result)} arrays; return the splits, "
            "((x_train, y_train), (x_val, y_val))"
        )
    data = {}
    for split, part in zip(("train", "val", "test"), result, strict=False):
        data[f"x_{split}"], data[f"y_{split}"] = _split_arrays(flag, split, part, model)
    return data


def _import(flag, target):
    """The module of a `module:function`: a module name, or a `.py` file."""
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise UsageError(f"{flag}: file not found: {target}")
        name = "_keras_condensa_data_" + os.path.basename(target)[:-3].replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        load = lambda: spec.loader.exec_module(module)  # noqa: E731
        folder = os.path.dirname(os.path.abspath(target))
    else:
        module = None
        load = lambda: importlib.import_module(target)  # noqa: E731
        folder = os.getcwd()
    try:
        with _on_path(folder):
            loaded = load()
    except ModuleNotFoundError as e:
        if e.name and target.startswith(e.name) and target[len(e.name) :] in ("", "."):
            raise UsageError(
                f"{flag}: no module {target} (looked in the current directory and on the "
                "Python path); run from the folder that holds it, add it to PYTHONPATH, or "
                "name a file: --data path/to/data.py:function"
            ) from None
        raise UsageError(f"{flag}: importing {target} failed: {one_line(e)}") from None
    except Exception as e:
        raise UsageError(
            f"{flag}: importing {target} raised {type(e).__name__}: {one_line(e)}"
        ) from None
    return module if module is not None else loaded


@contextlib.contextmanager
def _on_path(folder):
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _split_arrays(flag, split, part, model):
    """`(x, y)` arrays of one split: a pair of arrays, or batches (see `_batches_to_arrays`)."""
    import numpy as np

    if (
        isinstance(part, (tuple, list))
        and len(part) == 2
        and all(hasattr(v, "shape") for v in part)
    ):
        x, y = (_numpy(v) for v in part)
        _check_size(flag, x.nbytes + y.nbytes)
        return x, y
    if isinstance(part, (str, bytes, dict)) or not hasattr(part, "__iter__"):
        raise UsageError(
            f"{flag}: its {split} split is a {type(part).__name__}; each split is (x, y) arrays, "
            "a tf.data.Dataset or an iterable of (x, y) batches"
        )
    cardinality = getattr(part, "cardinality", None)
    if callable(cardinality) and int(np.asarray(cardinality())) == -1:  # tf.data.INFINITE
        raise UsageError(
            f"{flag}: its {split} split repeats forever; drop .repeat() (it is read once)"
        )
    return _batches_to_arrays(flag, split, part, model)


def _batches_to_arrays(flag, split, batches, model):
    """Concatenates `(x, y)` batches; single samples (a dataset without `.batch`) are stacked."""
    import numpy as np

    xs, ys, total = [], [], 0
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            what = type(batch).__name__
            if isinstance(batch, (tuple, list)):
                what = f"a {what} of {len(batch)}"
            raise UsageError(
                f"{flag}: its {split} split yields {what}; batches must be (x, y) pairs"
            )
        x, y = _numpy(batch[0]), _numpy(batch[1])
        xs.append(x)
        ys.append(y)
        total += x.nbytes + y.nbytes
        _check_size(flag, total)
    if not xs:
        raise UsageError(f"{flag}: its {split} split is empty")
    rank = len(model.inputs[0].shape) - 1 if model is not None else None
    join = np.stack if xs[0].ndim == rank else np.concatenate
    try:
        return join(xs), join(ys)
    except ValueError as e:
        raise UsageError(
            f"{flag}: the batches of its {split} split do not fit together: {one_line(e)}"
        ) from None


def _numpy(value):
    """A numpy array of a numpy, TensorFlow, JAX or PyTorch array."""
    import numpy as np

    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


def _check_size(flag, size):
    if size > MAX_BYTES:
        raise UsageError(
            f"{flag}: more than {MAX_BYTES / 2**30:.0f} GiB of arrays; the command line holds "
            "its data in memory: give a sample of it (or smaller images, --image-size), or "
            "compress with the Python API (kc.search.CompressionTuner) on your own pipeline"
        )
