"""TensorBoard event files without TensorFlow: a writer and the callbacks that use it.

`EventWriter` appends events to a new `events.out.tfevents.*` file with the
`tensorboard` package's own record writer and protocol buffers, so logging
works on the JAX and PyTorch backends with no TensorFlow installed (the
`tensorboard` package's `EventFileWriter` and `tf.summary` would import it).
`CompressionSummaries` is tfmot's `PruningSummaries` for a scheme: per-layer
density and the schedules' target sparsity during `fit` (`kc.callbacks(scheme,
log_dir=...)` adds it). `EpochScalars` writes a fit's epoch logs the way
`keras.callbacks.TensorBoard` lays them out (`train/epoch_loss`,
`validation/epoch_accuracy`). The `tensorboard` package is imported when a
writer is made, never at import.
"""

import itertools
import os
import socket
import time

import keras
import numpy as np
from keras import ops

from keras_condensa import masking

#: A process-wide counter: two writers opened in the same second get different files.
_FILE_COUNTER = itertools.count()
#: The `update_freq` values besides a positive number of batches.
_EPOCH = "epoch"


def tensorboard_protos():
    """`(event_pb2, summary_pb2, RecordWriter)` from the `tensorboard` package."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415 - optional
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "Writing TensorBoard logs needs the `tensorboard` package: pip install tensorboard "
            "(or pip install keras-condensa[tensorboard]). TensorFlow is not needed."
        ) from e
    return event_pb2, summary_pb2, RecordWriter


class EventWriter:
    """Writes TensorBoard events to a new event file in `log_dir`, in pure Python.

    Each writer makes its own file (`events.out.tfevents.<time>.<host>.<pid>.<n>`),
    as TensorFlow's writers do; TensorBoard reads every file of a directory as
    one run.

    Args:
        log_dir: a local directory, created if missing.

    Raises:
        ImportError: the `tensorboard` package is not installed.

    Example:

    ```python
    with EventWriter("logs/run1") as writer:
        writer.scalars({"loss": 0.3, "accuracy": 0.9}, step=1)
    ```
    """

    def __init__(self, log_dir):
        self._event_pb2, self._summary_pb2, record_writer = tensorboard_protos()
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = str(log_dir)
        # TensorBoard reads a run's files in name order: the counter is padded to sort.
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_COUNTER):06d}"
        )
        self.path = os.path.join(self.log_dir, name)
        self._records = record_writer(open(self.path, "wb"))  # noqa: SIM115 - closed by close()
        self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event):
        self._records.write(event.SerializeToString())

    def scalars(self, values, step):
        """Writes `{tag: number}` as scalars at `step` (one event)."""
        summary = self._summary_pb2.Summary(
            value=[
                self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
                for tag, value in values.items()
            ]
        )
        self.summary(summary, step)

    def summary(self, summary, step=0):
        """Writes a `tensorboard.compat.proto.summary_pb2.Summary` (e.g. an HParams summary)."""
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self):
        self._records.flush()

    def close(self):
        if not self._records.closed:
            self._records.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Writers:
    """One `EventWriter` per subdirectory of `log_dir`, opened on first use."""

    def __init__(self, log_dir):
        tensorboard_protos()  # a missing package is reported when the callback is made, not mid-fit
        self.log_dir = str(log_dir)
        self._open = {}

    def __call__(self, name):
        if name not in self._open:
            self._open[name] = EventWriter(os.path.join(self.log_dir, name))
        return self._open[name]

    def flush(self):
        for writer in self._open.values():
            writer.flush()

    def close(self):
        for writer in self._open.values():
            writer.close()
        self._open = {}


def _check_update_freq(update_freq):
    if update_freq == _EPOCH:
        return update_freq
    if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
        raise ValueError(
            f"update_freq must be 'epoch' or a positive number of batches. "
            f"Received: update_freq={update_freq!r}"
        )
    return update_freq


class EpochScalars(keras.callbacks.Callback):
    """Writes a fit's epoch logs to TensorBoard, laid out as `keras.callbacks.TensorBoard` does.

    At each epoch's end, `logs["name"]` goes to `log_dir/train` and
    `logs["val_name"]` to `log_dir/validation`, both as `epoch_name` at the
    epoch's index (so a run split over several fits with `initial_epoch`
    continues one curve). No TensorFlow needed.

    Args:
        log_dir: the run's directory.

    Raises:
        ImportError: the `tensorboard` package is not installed.
    """

    def __init__(self, log_dir):
        super().__init__()
        self._writers = _Writers(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        runs = {}
        for key, value in (logs or {}).items():
            if isinstance(value, (bool, str)) or np.ndim(value) != 0:
                continue
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            runs.setdefault(run, {})[f"epoch_{name}"] = float(value)
        for run, values in runs.items():
            self._writers(run).scalars(values, step=epoch)
        self._writers.flush()

    def on_train_end(self, logs=None):
        self._writers.close()


class CompressionSummaries(keras.callbacks.Callback):
    """Writes per-layer density and the schedules' target sparsity to TensorBoard.

    tfmot's `PruningSummaries` for a `kc` scheme, on any backend. Into
    `log_dir/compression`, at the optimizer's step:
    - `density/<layer>`: nonzeros over the weights the scheme transforms in
      each wrapped layer, with masks and thresholds applied (as `kc.summary`
      counts them; quantization aside);
    - `model/density`: the same over every wrapped layer;
    - `target_sparsity/<operator>`: the sparsity each scheduled operator's
      schedule asks for at the last batch (`ConstantSparsity`,
      `PolynomialDecay`), next to what the masks reached.

    Made by `kc.callbacks(scheme, log_dir=...)`, after the `UpdateMasks`
    whose schedules it reads.

    Args:
        updates: the `kc.UpdateMasks` callback of the same fit.
        log_dir: the run's directory (the scalars go to `log_dir/compression`).
        update_freq: `"epoch"` (default) or a number of batches between writes.

    Raises:
        ImportError: the `tensorboard` package is not installed.
        ValueError: a bad `update_freq`.
    """

    def __init__(self, updates, log_dir, update_freq=_EPOCH):
        super().__init__()
        self.update_freq = _check_update_freq(update_freq)
        self._updates = updates
        self._writers = _Writers(log_dir)
        operators = updates.scheme.operators()
        names = [type(op).__name__ for op in operators]
        self._names = {
            index: name if names.count(name) == 1 else f"{name}_{index}"
            for index, name in enumerate(names)
        }
        self._batches = 0

    def _write(self):
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        step = int(ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else 0
        values, total, kept = {}, 0, 0
        for wrapper in masking.iter_wrappers(model):
            arrays = [ops.convert_to_numpy(wrapper.pruned_value(p)) for p in wrapper.chains]
            size = sum(a.size for a in arrays)
            nonzeros = sum(int(np.count_nonzero(a)) for a in arrays)
            values[f"density/{wrapper.layer.name}"] = nonzeros / size if size else 1.0
            total, kept = total + size, kept + nonzeros
        values["model/density"] = kept / total if total else 1.0
        for index, sparsity in self._updates.target_sparsity().items():
            values[f"target_sparsity/{self._names[index]}"] = sparsity
        self._writers("compression").scalars(values, step=step)
        self._writers.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq != _EPOCH and self._batches % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == _EPOCH:
            self._write()

    def on_train_end(self, logs=None):
        self._writers.close()
