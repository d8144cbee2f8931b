"""The one atomic write of the library: models, LiteRT and .kcz files, JSON and text.

Every file the library writes for a user goes to a temporary name in the
destination's directory and is renamed into place (`os.replace`), so an
interruption or a failure leaves the previous file, or none, never half of
one. (`tflite_export` keeps its own: it must work without `keras_condensa`.)
"""

import contextlib
import json
import os
import tempfile


def _chmod_default(path):
    """Gives a `mkstemp` file (mode 0600) the permissions of a file created normally."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renamed to `path` if the block succeeds.

    Args:
        path: the destination file.

    Yields:
        The temporary path to write (it exists, empty; keeps `path`'s extension).

    Raises:
        OSError: the directory is not writable; `path` is then left as it was.

    Example:

    ```python
    with atomic_path("model.keras") as tmp:
        model.save(tmp)
    ```
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        _chmod_default(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomically(path, data):
    """Writes `data` (str or bytes) to `path` through a temporary file and `os.replace`.

    Args:
        path: the destination.
        data: the content; `str` is written as UTF-8.

    Raises:
        OSError: the directory is not writable; `path` is then left as it was.

    Example:

    ```python
    write_atomically("report.md", "# Report\\n")
    ```
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json_atomically(path, obj):
    """Writes `obj` as JSON to `path`, atomically (see `write_atomically`).

    Args:
        path: the destination.
        obj: a JSON-serialisable object.
    """
    write_atomically(path, json.dumps(obj))


def save_model_atomically(model, path):
    """Saves a Keras `model` to the `.keras` file `path`, atomically.

    Args:
        model: a `keras.Model`.
        path: the destination, ending in `.keras`.
    """
    with atomic_path(path) as tmp:
        model.save(tmp)
