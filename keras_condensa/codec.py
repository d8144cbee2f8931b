"""`kc.codec`: a model in one small, entropy-coded file (`.kcz`), bit-exact.

A pruned and clustered model is mostly zeros and a few distinct values,
which general-purpose compressors (gzip of a `.keras` file) code in far more
bits than the information they hold. `kc.codec` codes each variable as a
palette: its distinct values (exact bit patterns), and an index per element
coded by a range coder (the `constriction` package) under the exact
frequencies of the values, so zeros and kept weights cost what their
entropy says. A variable with many distinct values (a dense float kernel)
is stored raw (byte planes, deflate or LZMA), whichever is smaller. The
architecture is the model's Keras config, compressed. The byte layout is in
`keras_condensa.codec_format`.

Bit-exact means: the loaded model has the architecture of the coded model
and every variable of it (`model.weights`: kernels, biases, BatchNormalization
moving statistics, activation ranges, integer and boolean variables) with the
same dtype, shape and bit pattern (`-0.0` and NaN payloads included), so it
predicts exactly what the coded model predicts on the same backend and
device. The coded model is `model` itself, or `kc.strip(model)` when it
holds compression wrappers (`kc.CompressionWrapper`) that strip removes.
One exception, which keeps outputs identical: a weight of a layer that keeps
its int8/int4 quantizer after `kc.strip` (quantization-aware training) is
stored as the forward pass uses it, fake-quantized, when quantizing that
value again gives it back bit for bit; the loaded model's stored kernel is
then the quantized one, not the float one it was trained from. Not stored:
the optimizer and the compile arguments (a loaded model is not compiled).

Custom layers (and other custom objects in the config) must be registered
with `@keras.saving.register_keras_serializable()` and imported before
`load`, as for `.keras` files.

Example:

```python
final = kc.strip(kc.Compose([kc.Prune(0.05), kc.Cluster(16)]).apply(model))  # then fine-tune
kc.codec.save(final, "lenet.kcz")      # bytes written
same = kc.codec.load("lenet.kcz")      # identical weights and predictions
```
"""

import errno
import json
import os

import constriction
import keras
import numpy as np
from keras import ops

from keras_condensa import codec_format as fmt
from keras_condensa import masking
from keras_condensa.codec_format import FORMAT_VERSION, CodecError
from keras_condensa.files import write_atomically
from keras_condensa.stripping import strip

__all__ = ["FORMAT_VERSION", "CodecError", "coded_bytes", "decode", "encode", "load", "save"]

SUFFIX = ".kcz"
# Larger palettes lose to raw bytes in practice, and the exact categorical
# model of constriction (`perfect=True`) is slow to build for them.
MAX_PALETTE = 4096
# Classes of these packages are found by Keras without registration.
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")


def save(model, path):
    """Writes `model` to the `.kcz` file `path`, atomically; returns its size in bytes.

    `load` gives back the model bit-exact: the same architecture and every
    variable of `model.weights` (BatchNormalization statistics included)
    with the same dtype, shape and bits, so the same predictions; integer
    QAT kernels kept by `kc.strip` are stored fake-quantized, as the forward
    pass uses them (details in the module docstring). The optimizer and the
    compile arguments are not stored. The file is written under a temporary
    name in the same directory and renamed into place, so a failure leaves
    the previous file (or none), never part of one.

    Args:
        model: a built `keras.Model`, plain or compressed by a scheme (then
            `kc.strip(model)` is what is coded).
        path: the destination, ending in `.kcz`.

    Returns:
        The number of bytes written.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `path` does not end in `.kcz`, the model is not built,
            or a layer of `model` is a custom class that is not registered
            (so it could not be loaded).

    Example:

    ```python
    final = kc.strip(pruned)
    size = kc.codec.save(final, "lenet.kcz")
    restored = kc.codec.load("lenet.kcz")
    ```
    """
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"A kc.codec file name must end in {SUFFIX!r}. Received: path={path!r}")
    data = encode(model)
    write_atomically(path, data)
    return len(data)


def load(path):
    """Reads a `.kcz` file written by `save`; returns a new, uncompiled `keras.Model`.

    Args:
        path: the `.kcz` file.

    Returns:
        The model, bit-exact with the one saved (see the module docstring).

    Raises:
        FileNotFoundError: there is no file at `path`.
        CodecError: (a `ValueError`) the file is not a `.kcz` file, is
            truncated or corrupt, or was written by a newer keras-condensa.
        ValueError: the architecture cannot be rebuilt (a custom layer
            that is not registered or not imported).

    Example:

    ```python
    model = kc.codec.load("lenet.kcz")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ```
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as error:
        raise FileNotFoundError(errno.ENOENT, "No such .kcz file", path) from error
    return _decode(data, repr(path))


def coded_bytes(model):
    """The size in bytes of `model`'s `.kcz` file (`len(encode(model))`).

    Args:
        model: a built `keras.Model`, plain or compressed by a scheme.

    Returns:
        An int.

    Example:

    ```python
    # LeNet-300-100 at 5% density, 16 values: about 4.7 KB (its float32 weights: 202 KB)
    kc.codec.coded_bytes(kc.strip(pruned))
    ```
    """
    return len(encode(model))


def encode(model):
    """Returns the `.kcz` bytes of `model` (what `save` writes).

    Args:
        model: a built `keras.Model`, plain or compressed by a scheme.

    Returns:
        `bytes`.

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: a layer of `model` is a custom class that is not
            registered, or the model is not built.

    Example:

    ```python
    data = kc.codec.encode(model)
    same = kc.codec.decode(data)
    ```
    """
    model = _coded_model(model)
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoder = constriction.stream.queue.RangeEncoder()
    entries, streams, raw = [], [], bytearray()
    for variable, value in zip(model.weights, _values(model), strict=True):
        if value.dtype.itemsize not in (1, 2, 4, 8):
            raise ValueError(
                f"kc.codec stores variables of 1, 2, 4 or 8-byte dtypes; '{variable.path}' is "
                f"{value.dtype.name}."
            )
        keys, counts, symbols, stored_raw = _plan(value)
        entries.append((value.dtype, value.shape, keys, counts))
        if stored_raw is not None:
            raw += fmt.to_planes(stored_raw)
        if symbols is not None:
            encoder.encode(symbols.astype(np.int32), _model(counts))
            streams.append((symbols, counts))
    indices = _shortest(encoder.get_compressed(), streams)
    return fmt.pack(fmt.write_header(text, entries), indices, bytes(raw))


def decode(data):
    """Rebuilds the model from `.kcz` bytes (what `load` does with a file's content).

    Args:
        data: `bytes` from `encode` (or a `.kcz` file's content).

    Returns:
        A new, uncompiled `keras.Model`.

    Raises:
        CodecError: (a `ValueError`) not `.kcz` data, truncated, corrupt,
            or written by a newer keras-condensa.
        ValueError: the architecture cannot be rebuilt.

    Example:

    ```python
    model = kc.codec.decode(kc.codec.encode(final))
    ```
    """
    return _decode(data, "the data")


# -- what is coded ---------------------------------------------------------------------------
def _coded_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"kc.codec codes a keras.Model. Received: model={model!r}")
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so it has no weights to code: call it on a "
            "batch or model.build(input_shape) first."
        )
    if _needs_strip(model):
        model = strip(model)
    _check_registered(model)
    return model


def _needs_strip(model):
    """Whether a wrapper of `model` runs an operator that `kc.strip` bakes in."""
    for wrapper in masking.iter_wrappers(model):
        used = {i for chain in wrapper.chains.values() for i in chain}
        used |= set(wrapper.layer_operators)
        if any(not wrapper.operators[i].kept_by_strip for i in used):
            return True
    return False


def _check_registered(model):
    """Raises unless Keras can find every layer class of `model` when it loads."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        cls = type(layer)
        if cls.__module__.split(".")[0] in _KERAS_PACKAGES:
            continue
        if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
            raise ValueError(
                f"Layer '{layer.name}' is an instance of {cls.__module__}.{cls.__qualname__}, "
                "which is not registered, so kc.codec.load could not rebuild it. Decorate the "
                "class with @keras.saving.register_keras_serializable(package='...') (and give "
                "it a get_config covering its constructor arguments)."
            )


def _values(model):
    """The array stored for each of `model.weights`.

    A weight that an integer QAT quantizer kept by `kc.strip` transforms is
    stored as the forward pass uses it when its operators give that value
    back unchanged: it then codes as a small palette, and outputs match.
    """
    stored = {}
    for wrapper in masking.iter_wrappers(model):
        for path in wrapper.chains:
            value = wrapper.effective_value(path)
            again = value
            for op, state in wrapper.chain(path):
                again = op.transform(state, again, False)
            value, again = ops.convert_to_numpy(value), ops.convert_to_numpy(again)
            if value.dtype == again.dtype and value.tobytes() == again.tobytes():
                stored[id(wrapper.weight(path))] = value
    return [stored[id(v)] if id(v) in stored else ops.convert_to_numpy(v) for v in model.weights]


# -- coding one variable ---------------------------------------------------------------------
def _plan(value):
    """How `value` is coded, the cheapest way: `(keys, counts, symbols, raw)`.

    A palette (`keys`, `counts`, and `symbols`, the index of each element,
    when there are several values), a zero map (`counts` of zeros and
    nonzeros, `symbols` 1 where nonzero, the nonzero values `raw`), or raw
    (`raw` is `value`). Costs are estimated: header bytes, the entropy of
    the symbols (what the range coder spends, within a few bytes) and the
    compressed raw bytes. Zero is one palette value among the others: a
    zero map then the nonzero indices is the same entropy (chain rule) and
    measured the same bytes. A zero map with raw nonzeros wins on pruned
    float weights with many distinct values; raw bytes on dense floats.
    """
    flat = value.reshape(-1)
    raw = (None, None, None, flat)
    if flat.size == 0:
        return raw
    plans = []
    every_key = fmt.to_keys(flat)
    keys, indices, counts = np.unique(every_key, return_inverse=True, return_counts=True)
    if len(keys) <= MAX_PALETTE:
        side = sum(fmt.varint_size(d) for d in np.diff(keys, prepend=keys.dtype.type(0)).tolist())
        side += sum(fmt.varint_size(c) for c in counts[:-1].tolist())
        symbols = indices.reshape(-1) if len(keys) > 1 else None
        plans.append((side + _entropy_bytes(counts), (keys, counts, symbols, None)))
    nonzero = every_key != fmt.to_keys(np.zeros(1, flat.dtype))[0]  # all bits zero
    kept = int(np.count_nonzero(nonzero))
    if 0 < kept < flat.size:
        counts = np.array([flat.size - kept, kept])
        cost = fmt.varint_size(kept) + _entropy_bytes(counts) + fmt.raw_size(flat[nonzero])
        plans.append((cost, (None, counts, nonzero, flat[nonzero])))
    if not plans:  # dense, with many distinct values: raw, no need to weigh it
        return raw
    plans.append((fmt.raw_size(flat), raw))
    return min(plans, key=lambda plan: plan[0])[1]


def _entropy_bytes(counts):
    """The bytes of `sum(counts)` symbols coded at the empirical entropy of `counts`."""
    total = float(np.sum(counts))
    return (total * np.log2(total) - float(np.sum(counts * np.log2(counts)))) / 8


def _model(counts):
    """The categorical entropy model of a palette's exact counts."""
    counts = np.asarray(counts, np.float64)
    return constriction.stream.model.Categorical(counts / counts.sum(), lazy=False, perfect=True)


def _decode_streams(data, streams):
    """Decodes `[(size, counts)]` index streams from the bytes of the range coder's words."""
    padded = bytes(data) + b"\0" * (-len(data) % 4)
    words = np.frombuffer(padded, ">u4").astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    return [decoder.decode(_model(counts), size) for size, counts in streams]


def _shortest(words, streams):
    """The range coder's words as big-endian bytes, as few as still decode to `streams`.

    The last word only needs to fall within the coder's final interval:
    with its low bytes zeroed (or rounded up) it often does, and trailing
    zero bytes are not stored (decoding pads them back).
    """
    full = words.astype(">u4").tobytes()
    if not streams:
        return b""
    sizes = [(len(indices), counts) for indices, counts in streams]
    last = int(words[-1])
    candidates = [full.rstrip(b"\0")]
    for shift in (24, 16, 8):
        step = 1 << shift
        for word in (last & -step, (last | (step - 1)) + 1):
            if word < 1 << 32:
                trial = words.copy()
                trial[-1] = word
                candidates.append(trial.astype(">u4").tobytes().rstrip(b"\0"))
    for candidate in sorted(set(candidates), key=len):
        if len(candidate) >= len(full):
            break
        try:
            decoded = _decode_streams(candidate, sizes)
        except (AssertionError, ValueError, RuntimeError):  # constriction: not decodable
            continue
        if all(np.array_equal(d, i) for d, (i, _) in zip(decoded, streams, strict=True)):
            return candidate
    return full


# -- decoding ----------------------------------------------------------------------------------
def _decode(data, source):
    header, index_data, raw = fmt.unpack(data, source)
    text, entries = fmt.read_header(header, source)
    try:
        config = json.loads(text.decode("utf-8"))
    except ValueError as error:
        raise CodecError(f"{source} is corrupt: its model config is not JSON ({error}).") from error
    arrays = _arrays(entries, index_data, raw, source)
    model = _rebuild(config, source)
    variables = model.weights
    found = [(tuple(v.shape), keras.backend.standardize_dtype(v.dtype)) for v in variables]
    wanted = [(a.shape, a.dtype.name) for a in arrays]
    if found != wanted:
        raise CodecError(
            f"The model rebuilt from {source} has variables {found} but the file holds "
            f"{wanted}: the code of a custom layer differs from the code that saved it."
        )
    for variable, array in zip(variables, arrays, strict=True):
        variable.assign(array)
    return model


def _arrays(specs, index_data, raw, source):
    """The variables' arrays, from their specs, the index stream and the raw stream."""
    streams = [(int(np.sum(c)), c) for _, _, _, c in specs if c is not None and len(c) > 1]
    try:
        indices = iter(_decode_streams(index_data, streams))
    except (AssertionError, ValueError, RuntimeError) as error:
        raise CodecError(
            f"{source} is corrupt: its index stream does not decode ({error})."
        ) from error
    arrays, offset = [], 0
    for dtype, shape, keys, counts in specs:
        size = int(np.prod(shape, dtype=np.int64))
        if keys is not None:
            values = fmt.from_keys(keys, dtype)
            array = values[next(indices)] if len(keys) > 1 else np.repeat(values, size)
        else:
            stored = size if counts is None else int(counts[1])
            end = offset + stored * dtype.itemsize
            if end > len(raw):
                raise CodecError(f"{source} is corrupt: its raw stream ends early.")
            array = fmt.from_planes(raw[offset:end], dtype, stored)
            offset = end
            if counts is not None:  # a zero map: the raw values are the nonzero ones
                values, array = array, np.zeros(size, dtype)
                array[next(indices).astype(bool)] = values
        arrays.append(array.reshape(shape))
    if offset != len(raw):
        raise CodecError(
            f"{source} is corrupt: its raw stream has {len(raw) - offset} extra bytes."
        )
    return arrays


def _rebuild(config, source):
    try:
        return keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The architecture in {source} could not be rebuilt: {error} Custom layers must be "
            "registered with @keras.saving.register_keras_serializable() and imported before "
            "kc.codec.load."
        ) from error
