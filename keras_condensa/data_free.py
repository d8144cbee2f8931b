"""Data-free compression: synthetic inputs distilled from a trained model itself.

`synthesize(model)` returns inputs for calibrating int8 quantization
(`tflite_export.export(..., representative_data=...)`) or for fine-tuning a
compressed model by distillation (`kc.distill`) when the training data is not
at hand. Methods (Haroush et al. 2020, "The Knowledge Within: Methods for
Data-Free Model Compression"; Cai et al. 2020, ZeroQ):

- `"batchnorm"`: Gaussian noise optimized so that, at every BatchNorm layer,
  the batch mean and variance of the layer's input match its running
  statistics (`moving_mean`, `moving_variance`). The loss is the per-channel
  KL divergence between the two Gaussians, averaged over channels and summed
  over BatchNorm layers, plus a small input prior (total variation and l2).
- `"inception"`: noise optimized so that the model assigns each sample its
  target class (cross-entropy, targets spread evenly over the classes), with
  the same prior; needs no BatchNorm, only a classifier output.
- `"batchnorm+inception"`: the sum of both losses.
- `"gaussian"`: standard normal noise, not optimized (a baseline).
- `"auto"`: `"batchnorm"` when the model has BatchNorm layers and taps can
  reach them all, else `"inception"`.

The optimization is a Keras `fit` of a small model whose only trainable weight
is the batch of inputs (a `keras.Variable`) and whose loss comes from the frozen
model (for the BatchNorm methods a copy with taps, `keras_condensa.batchnorm_taps`):
Keras computes the gradients, so it runs on the TensorFlow, JAX and PyTorch
backends.

The BatchNorm methods trust the running statistics: they should be those of the
training data (a model trained to convergence; with few steps and the default
momentum 0.99 they can lag the weights, and matching them then helps less).
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_condensa import batchnorm_taps
from keras_condensa.model_checks import check_model
from keras_condensa.outputs import looks_like_probabilities, predicted_classes

METHODS = ("batchnorm", "inception", "batchnorm+inception", "gaussian", "auto")


class _Clip(keras.constraints.Constraint):
    """Projects the inputs into `[low, high]` after every optimizer step."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def __call__(self, w):
        return ops.clip(w, self.low, self.high)


class _Synthesizer(keras.Model):
    """Trains one batch of inputs (its only trainable weight) against a frozen tapped model."""

    def __init__(
        self, frozen, input_shape, batch_size, use_bn, use_targets, priors, from_logits, clip
    ):
        super().__init__(name="data_free_synthesizer")
        self.frozen = frozen
        self.use_bn = use_bn
        self.use_targets = use_targets
        self.tv_weight, self.l2_weight = priors
        self.from_logits = from_logits
        self.images = self.add_weight(
            shape=(batch_size, *input_shape),
            initializer="zeros",
            constraint=clip,
            name="synthetic_inputs",
        )
        self.targets = self.add_weight(
            shape=(batch_size,), initializer="zeros", dtype="int32", trainable=False, name="targets"
        )

    # Only the inputs train; the model's weights (the user's own, for "inception") stay as
    # they are, without touching any layer's `trainable` flag.
    @property
    def trainable_variables(self):
        return [self.images]

    @property
    def trainable_weights(self):
        return [self.images]

    @property
    def non_trainable_variables(self):
        return [v for v in self.variables if v is not self.images]

    @property
    def non_trainable_weights(self):
        return [w for w in self.weights if w is not self.images]

    def call(self, inputs, training=None):
        return self.frozen(self.images, training=False)

    def prior(self):
        x = self.images
        loss = self.l2_weight * ops.mean(ops.square(x))
        rank = len(x.shape)
        first = 1 if keras.config.image_data_format() == "channels_last" else 2
        for axis in range(first, first + rank - 2):  # spatial axes: none for flat inputs
            size = x.shape[axis]
            step = ops.take(x, np.arange(1, size), axis=axis) - ops.take(
                x, np.arange(size - 1), axis=axis
            )
            loss = loss + self.tv_weight * ops.mean(ops.abs(step))
        return loss

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.prior()
        if self.use_bn:
            loss = loss + ops.sum(ops.stack([ops.cast(t, "float32") for t in self.losses]))
        if self.use_targets:
            loss = loss + ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    self.targets, ops.cast(y_pred, "float32"), from_logits=self.from_logits
                )
            )
        return loss


def _check_count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_weight(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def _input_shape(model):
    inputs = getattr(model, "inputs", None)
    if inputs:
        shapes = [tuple(t.shape) for t in inputs]
    else:  # a subclassed model: the shape it was built with
        built = (model.get_build_config() or {}).get("input_shape")
        flat = isinstance(built, (tuple, list)) and all(
            d is None or isinstance(d, int) for d in built
        )
        shapes = [tuple(built)] if flat else list(built or ())
    if len(shapes) != 1:
        raise ValueError(
            f"synthesize takes a model with one input; model '{model.name}' has {len(shapes)}. "
            "Synthesize for a single-input sub-model instead."
        )
    shape = shapes[0][1:]
    if any(d is None for d in shape):
        raise ValueError(
            f"synthesize needs the input shape of model '{model.name}' without the batch axis "
            f"fully known. Received: {shape}. Rebuild the model with a fixed keras.Input shape."
        )
    return shape


def _num_classes(model, shape, needs):
    outputs = keras.tree.flatten(model(np.zeros((1, *shape), "float32"), training=False))
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ValueError(
            f"{needs} needs a classifier: one output of shape (batch, classes). Model "
            f"'{model.name}' has outputs {[tuple(o.shape) for o in outputs]}. Use "
            "method='batchnorm' (it needs BatchNorm layers, not classes) without return_labels."
        )
    return int(outputs[0].shape[-1])


def _resolve_method(model, method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
    if method in ("inception", "gaussian"):
        return method
    tappable, hidden = batchnorm_taps.batchnorm_layers(model)
    if method == "auto":
        return "batchnorm" if tappable and not hidden else "inception"
    if hidden:
        names = ", ".join(f"'{layer.name}'" for layer in hidden)
        raise ValueError(
            f"method={method!r} taps the inputs of every BatchNorm layer, but model "
            f"'{model.name}' ({type(model).__name__}) has BatchNorm layers {names} inside "
            "custom layers or a subclassed model, whose inputs cannot be reached. Pass a "
            "Sequential or functional model, or use method='inception' (it needs no BatchNorm)."
        )
    if not tappable:
        raise ValueError(
            f"method={method!r} matches BatchNorm statistics, and model '{model.name}' has no "
            "BatchNormalization layer. Use method='inception' (targets classes, needs no "
            "BatchNorm) or method='auto' (picks it for models without BatchNorm)."
        )
    return method


def _predicted_classes(model, x, batch_size):
    found = []
    for i in range(0, len(x), batch_size):
        found.append(predicted_classes(ops.convert_to_numpy(model(x[i : i + batch_size]))))
    return np.concatenate(found)


def _check_range(input_range):
    if input_range is None:
        return None
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise ValueError(
            "input_range must be None or a pair (low, high) with low < high, e.g. (0, 1) for "
            f"images scaled to [0, 1]. Received: input_range={input_range!r}"
        )
    return low, high


def synthesize(
    model,
    n=512,
    method="batchnorm",
    steps=200,
    batch_size=128,
    learning_rate=0.1,
    seed=None,
    input_range=None,
    tv_weight=0.02,
    l2_weight=0.001,
    from_logits=None,
    return_labels=False,
):
    """Synthesizes `n` inputs for `model` from what the model itself stores.

    The inputs start as Gaussian noise and are optimized in batches of
    `batch_size` for `steps` Adam steps each (learning rate cosine-decayed to
    zero) against the method's loss (see the module docstring). BatchNorm
    statistics are matched per batch, so larger batches match them more
    faithfully. The inputs lie in the model's input space (whatever scaling
    the model expects, as its BatchNorm statistics tell); they are not
    clipped unless `input_range` is given. The model is not modified: it
    runs frozen, in inference mode (a copy with taps for the BatchNorm
    methods).

    Args:
        model: a built, trained `keras.Model` with one input. `"batchnorm"`
            needs a Sequential or functional model (nested ones work) with
            `BatchNormalization` layers; `"inception"` needs one classifier
            output `(batch, classes)` and works for subclassed models too.
        n: number of inputs to return (>= 1).
        method: `"batchnorm"`, `"inception"`, `"batchnorm+inception"`,
            `"gaussian"` or `"auto"` (see the module docstring).
        steps: optimizer steps per batch (>= 1).
        batch_size: inputs optimized together (>= 1; capped at `n`).
        learning_rate: initial Adam learning rate (> 0).
        seed: integer seed of the initial noise and the targets; the same
            seed on the same backend and machine gives the same inputs.
            `None`: a fresh draw.
        input_range: `None` (default: unbounded, the noise is standard
            normal) or `(low, high)`, the range of the model's real inputs
            when known (`(0, 1)` for images scaled to [0, 1]): the noise is
            then centred in it (standard deviation a quarter of its width)
            and every step projects the inputs into it.
        tv_weight: weight (>= 0) of the total-variation prior (mean absolute
            difference of neighbouring values along the spatial axes of image
            or sequence inputs; none for flat inputs).
        l2_weight: weight (>= 0) of the l2 prior (mean square of the inputs).
        from_logits: whether the model outputs logits (for the target loss
            of `"inception"`) or probabilities; `None` (default) judges from
            the outputs on the starting noise (rows of non-negative values
            summing to one are probabilities).
        return_labels: also return a class per input: the target class for
            the inception methods, otherwise the class the model predicts
            (argmax of its output), usable as labels for `kc.distill`.

    Returns:
        A float32 NumPy array of shape `(n, *input_shape)`, or with
        `return_labels=True` a tuple `(inputs, labels)`, labels int32 `(n,)`.

    Raises:
        TypeError: `model` is not a Keras 3 model.
        ValueError: a bad argument; `method="batchnorm"` for a model without
            BatchNorm layers (use `method="inception"` or `"auto"`) or whose
            BatchNorms sit inside custom layers; `"inception"` for a model
            without a single `(batch, classes)` output; a model with several
            or variable-shaped inputs.

    Example:

    ```python
    x_syn = kc.data_free.synthesize(model, n=512, seed=0)
    te.export(model, "model.tflite", quantize="int8", representative_data=x_syn)

    x_syn, y_syn = kc.data_free.synthesize(model, seed=0, return_labels=True)
    distiller = kc.distill(pruned, teacher=model)
    distiller.fit(x_syn, y_syn, epochs=20, callbacks=kc.callbacks(scheme))
    ```
    """
    check_model(model, subclassed=True)
    n = _check_count("n", n)
    steps = _check_count("steps", steps)
    batch_size = min(_check_count("batch_size", batch_size), n)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not (learning_rate > 0)
    ):
        raise ValueError(f"learning_rate must be > 0. Received: learning_rate={learning_rate!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an integer or None. Received: seed={seed!r}")
    bounds = _check_range(input_range)
    priors = (_check_weight("tv_weight", tv_weight), _check_weight("l2_weight", l2_weight))
    method = _resolve_method(model, method)
    shape = _input_shape(model)
    rng = np.random.default_rng(seed)
    labels = None
    if "inception" in method:
        classes = _num_classes(model, shape, f"method={method!r}")
        labels = rng.permutation(np.arange(n) % classes).astype("int32")
    elif return_labels:
        _num_classes(model, shape, "return_labels=True")
    noise = rng.standard_normal((n, *shape)).astype("float32")
    if bounds is not None:
        low, high = bounds
        noise = np.clip((low + high) / 2 + (high - low) / 4 * noise, low, high).astype("float32")
    x = noise
    if from_logits is None:  # Only the target loss of the inception methods reads it.
        from_logits = labels is None or _outputs_logits(model, noise)
    if method != "gaussian":
        synthesizer = _Synthesizer(
            batchnorm_taps.tapped_copy(model)[0] if "batchnorm" in method else model,
            shape,
            batch_size,
            use_bn="batchnorm" in method,
            use_targets=labels is not None,
            priors=priors,
            from_logits=bool(from_logits),
            clip=None if bounds is None else _Clip(*bounds),
        )
        x = _optimize(synthesizer, noise, labels, steps, float(learning_rate))
    if not return_labels:
        return x
    if labels is None:
        labels = _predicted_classes(model, x, batch_size)
    return x, labels


def _outputs_logits(model, x):
    """Whether `model` outputs logits, judged from its outputs on a few of the inputs `x`."""
    return not looks_like_probabilities(ops.convert_to_numpy(model(x[:8], training=False)))


def _optimize(synthesizer, noise, labels, steps, learning_rate):
    """Optimizes `noise` batch by batch with `synthesizer`; returns the optimized inputs."""
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    synthesizer.compile(optimizer=optimizer)
    ticks = np.zeros((steps, 1), "float32")  # one dummy sample per step; the inputs are weights
    n, batch_size = len(noise), synthesizer.images.shape[0]
    out = np.empty_like(noise)
    for start in range(0, n, batch_size):
        # The last batch re-optimizes the tail of the noise, so every batch is full-sized.
        begin = min(start, n - batch_size)
        synthesizer.images.assign(noise[begin : begin + batch_size])
        if labels is not None:
            synthesizer.targets.assign(labels[begin : begin + batch_size])
        for variable in optimizer.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))
        synthesizer.fit(ticks, batch_size=1, epochs=1, shuffle=False, verbose=0)
        out[start : begin + batch_size] = ops.convert_to_numpy(synthesizer.images)[start - begin :]
    return out
