"""`EntropyCoded`: weights as integer latents under a learned prior, trained with a rate penalty.

After Oktay et al. 2020, "Scalable Model Compression by Entropy Penalized
Reparameterization" (ICLR). Each covered weight is represented by integer
latents `z`, decoded by a scalar affine transform (`w = scale * z`), and a
learned probability model of the latents (one per weight tensor, a mixture of
discretized logistics) gives their code length in bits. Training minimizes the
task loss plus `rate_weight` times the kilobytes the latents take under that
model, so the accuracy / size trade-off is one number.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_condensa.operators.base import Operator, is_real

RELAXATIONS = ("straight_through", "noise")
MAX_COMPONENTS = 16

# The decoder's log-scale and the prior's parameters are stored divided by
# _SPEED, so that Adam's fixed step size moves them _SPEED times faster: the
# grid has to coarsen (and the prior to follow the latents) within a short
# fine-tuning.
_SPEED = 20.0
# Probabilities are bounded below (a latent far in a component's tail is not
# worth more than ~30 bits), which keeps the logarithm finite.
_MIN_PROBABILITY = 1e-9
_BITS_PER_KILOBYTE = 8192.0


def check_rate_weight(rate_weight):
    """Raises unless `rate_weight` is a finite number >= 0; returns it as a float."""
    if not is_real(rate_weight) or not math.isfinite(rate_weight) or rate_weight < 0:
        raise ValueError(
            "rate_weight is the loss added per kilobyte of coded latents and must be a "
            f"finite number >= 0 (0.01 to 1 on small models). Received: rate_weight={rate_weight!r}"
        )
    return float(rate_weight)


def log2_probability(latents, loc, log_scale, logits):
    """Log2 probability of latents under a mixture of discretized logistics.

    A component with location `loc` and scale `exp(log_scale)` gives the
    integer `z` the mass of its logistic distribution over `[z - 0.5, z +
    0.5]`; the components are mixed with `softmax(logits)`. At an integer it
    is the probability an entropy coder codes it with; evaluated at a latent
    plus uniform noise in `[-0.5, 0.5)` it is the density of the noisy
    latent, a differentiable stand-in for the code length of the rounded
    one (Ballé et al.'s relaxation).

    Args:
        latents: a tensor of any shape.
        loc, log_scale, logits: tensors of shape `(components,)`.

    Returns:
        A tensor shaped like `latents`: `log2 P(latent)`, at most 0.
    """
    centered = ops.expand_dims(latents, -1) - loc
    inverse_scale = ops.exp(-log_scale)
    # Mass of [x - 0.5, x + 0.5] computed in the tail nearer x, where it is small
    # but exact (1 - sigmoid(t) = sigmoid(-t)).
    sign = ops.where(centered > 0, -1.0, 1.0)
    upper = ops.sigmoid(sign * (centered + 0.5) * inverse_scale)
    lower = ops.sigmoid(sign * (centered - 0.5) * inverse_scale)
    weights = ops.exp(logits - ops.logsumexp(logits))
    mass = ops.sum(weights * ops.abs(upper - lower), axis=-1)
    return ops.log(ops.maximum(mass, _MIN_PROBABILITY)) / math.log(2.0)


def _initial_state(value, components, init_step):
    """Host values of the state that makes the decoded weight start at `value`.

    Returns `(step, prior location, prior log-scale, prior logits)`.
    """
    value = np.asarray(value, "float64")
    live = value[value != 0]
    spread = float(live.std()) if live.size > 1 else 0.0
    if not spread > 0:
        spread = float(np.abs(live).max()) if live.size else 1.0
    step = spread * init_step
    # Logistic components centred on zero with scales around the latents' own
    # (a logistic's standard deviation is scale * pi / sqrt(3)), a factor of 2 apart:
    # heavy tails for the few large weights, a narrow one for the many small ones.
    base = math.log(math.sqrt(3.0) / math.pi / init_step)
    offsets = np.arange(components) - (components - 1) / 2
    log_scale = base + math.log(2.0) * offsets
    zeros = np.zeros(components)
    return step, zeros, log_scale, zeros


def _zeros_kept(value, decoded):
    """`decoded`, exactly +0.0 where `value` is zero or `decoded` is (no -0.0: a coder
    that keeps bit patterns would pay for two zeros)."""
    zero = ops.logical_or(ops.equal(value, 0), ops.equal(decoded, 0))
    return ops.where(zero, ops.zeros((), decoded.dtype), decoded)


@keras.saving.register_keras_serializable(package="keras_condensa")
class EntropyCoded(Operator):
    """Entropy-penalized reparameterization: weights in as few coded bits as training allows.

    Each covered kernel `w` is represented by latents `z`, one per weight,
    and decoded as `w = scale * round(z)` (with `shift=True`:
    `scale * (round(z) + offset)`), with a trainable `scale` (and `offset`)
    per kernel. A learned probability model of the integer latents (per
    kernel: a mixture of `components` discretized logistics with trainable
    locations, scales and weights) gives their code length, and
    `rate_weight` times that length in kilobytes (`bits / 8192`) is added to
    the training loss. Training then trades accuracy against coded size: the
    latents gather on a few integers, most on 0.

    Rounding is relaxed during training. With `relaxation="straight_through"`
    (default, as in the paper) the forward pass uses `round(z)` and the
    gradient goes through the rounding as if it were the identity; with
    `"noise"` the forward pass uses `z + u`, `u ~ U(-0.5, 0.5)`. Either way
    the rate is the code length of `z + u` under the prior (Ballé et al.'s
    relaxation of the code length of `round(z)`). On LeNet-300-100 the two
    match at small rate weights; at `rate_weight=3` (10 epochs of Adam 1e-3,
    `init_step=0.5`, 3 seeds) straight-through kept 94.3% accuracy in 0.85
    KB of kernels, noise 87.0% in 1.33 KB.

    At inference and in `kc.strip` the weights are exactly the decoded
    integers (float32): a few distinct values per kernel, latent 0 exactly
    `+0.0`, so that `kc.codec` stores them in about the bits the prior
    counts (after fine-tuning, the learned prior prices them within a few
    percent of their empirical entropy).

    The layer's kernel variable holds `z * step`, where `step` (set at
    `apply` from the weights as they come in) is `init_step` times the
    kernel's standard deviation: it starts as the weight itself, and Adam
    moves a latent by about `learning_rate / step` per training step. The
    decoder's `scale` starts at `step`, so the model starts as the weights
    rounded to that grid; the scale and the prior's parameters are stored
    divided by 20 so that Adam moves them fast enough for a short
    fine-tuning.

    A weight that is exactly zero when it reaches this operator (pruned by
    an operator before it in a `kc.Compose`) stays exactly zero; the rate
    counts it as latent 0, as a coder of the stripped weight codes it.

    Measured on LeNet-300-100 (scikit-learn digits; 20 dense epochs,
    accuracy 97.6%, float32 weights 202 KB; defaults but `rate_weight`;
    batch 32; means of 3 seeds): after 20 epochs of Adam from 1e-3 with
    cosine decay to 0, `rate_weight` 0.01 and 0.1 gave 14.5 and 11.3 KB of
    coded kernels at 97.3% accuracy; with `biases=True`, 0.3, 1 and 2 gave
    `kc.codec` files of 7.1, 2.9 and 1.6 KB at 97.2, 96.7 and 96.2%. After
    10 epochs at a constant 1e-3, 0.01, 0.1 and 1 gave 16.1, 14.2 and 2.6 KB
    of kernels at 96.6, 96.3 and 95.7%.

    Args:
        rate_weight: the loss one kilobyte of coded latents costs, next to
            the task loss, a number >= 0 (0.01 to 1 on small models; 0:
            no penalty, quantization-aware training on the initial grid).
        components: logistic components of each kernel's prior, 1 to 16.
        init_step: the initial grid step, in standard deviations of each
            kernel (0.5: about 3 bits per weight at the start).
        relaxation: `"straight_through"` or `"noise"` (see above).
        shift: also train an offset of the grid (latent 0 then decodes to a
            nonzero value: no exact zeros but pruned ones).
        biases: also code the layers' biases (the paper codes every
            parameter; in a LeNet-300-100 file the float32 biases are 1.6 KB).
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave untouched.

    Example:

    ```python
    scheme = kc.EntropyCoded(rate_weight=1.0, biases=True)
    coded = scheme.apply(model)
    decay = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=20 * steps_per_epoch)
    coded.compile(keras.optimizers.Adam(decay), loss, metrics=["accuracy"])
    coded.fit(x, y, epochs=20, batch_size=32)
    kc.codec.save(kc.strip(coded), "model.kcz")  # LeNet-300-100 on digits: about 3 KB
    ```
    """

    scheme_word = "ec"
    scheme_args = ("RATE",)
    scheme_help = "entropy-penalized reparameterization: RATE loss per kilobyte of coded weights"

    exclusive = "entropy coded"

    def __init__(
        self,
        rate_weight=0.1,
        components=3,
        init_step=0.5,
        relaxation="straight_through",
        shift=False,
        biases=False,
        include=None,
        exclude=None,
    ):
        super().__init__(include=include, exclude=exclude)
        self.rate_weight = check_rate_weight(rate_weight)
        if (
            isinstance(components, bool)
            or not isinstance(components, numbers.Integral)
            or not 1 <= components <= MAX_COMPONENTS
        ):
            raise ValueError(
                "components is the number of logistic components of each kernel's prior and "
                f"must be an int in [1, {MAX_COMPONENTS}]. Received: components={components!r}"
            )
        if not is_real(init_step) or not 0 < init_step < math.inf:
            raise ValueError(
                "init_step is the initial grid step in standard deviations of each weight and "
                f"must be a positive number (e.g. 0.5). Received: init_step={init_step!r}"
            )
        if relaxation not in RELAXATIONS:
            raise ValueError(
                f"relaxation must be one of {RELAXATIONS}. Received: relaxation={relaxation!r}"
            )
        self.components = int(components)
        self.init_step = float(init_step)
        self.relaxation = relaxation
        self.shift = bool(shift)
        self.biases = bool(biases)

    def paths(self, layer, spec):
        if self.biases and spec.bias is not None:
            return (*spec.weights, spec.bias)
        return tuple(spec.weights)

    def build(self, wrapper, path, variable):
        prefix = path.replace(".", "_")
        # From the variable as it is now; `update` sets them again at `apply`, from the
        # weights copied in (and loading a saved model restores them).
        step, loc, log_scale, logits = _initial_state(
            ops.convert_to_numpy(variable), self.components, self.init_step
        )

        # Without a rate, nothing trains the prior (and Keras would warn of missing gradients).
        rated = bool(self.rate_weight)

        def weight(name, value, trainable=rated, shape=(self.components,)):
            return wrapper.add_weight(
                name=f"{prefix}_{name}",
                shape=shape,
                initializer=keras.initializers.Constant(value),
                trainable=trainable,
            )

        state = {
            "step": weight("ec_step", step, trainable=False, shape=()),
            "log_scale": weight("ec_log_scale", 0.0, trainable=True, shape=()),
            "prior_loc": weight("ec_prior_loc", loc / _SPEED),
            "prior_log_scale": weight("ec_prior_log_scale", log_scale / _SPEED),
            "prior_logits": weight("ec_prior_logits", logits / _SPEED),
            "seed": keras.random.SeedGenerator(),
        }
        if self.shift:
            state["offset"] = weight("ec_offset", 0.0, trainable=True, shape=())
        return state

    # -- the decoder and the prior ----------------------------------------------
    def latents(self, state, value):
        """The continuous latents `z` of the weight (`round(z)` is what is coded)."""
        return value / ops.cast(state["step"], value.dtype)

    def decode(self, state, latents):
        """The weight the latents decode to: `scale * latents` (`+ scale * offset` with a shift)."""
        dtype = latents.dtype
        step = ops.cast(state["step"], dtype)
        scale = step * ops.exp(ops.cast(state["log_scale"], dtype) * _SPEED)
        if not self.shift:
            return scale * latents
        return scale * (latents + ops.cast(state["offset"], dtype))

    def bits(self, state, latents):
        """Code length in bits of `latents` (integers, or relaxed) under the weight's prior."""
        latents = ops.cast(latents, "float32")
        log2p = log2_probability(
            latents,
            ops.cast(state["prior_loc"], "float32") * _SPEED,
            ops.cast(state["prior_log_scale"], "float32") * _SPEED,
            ops.cast(state["prior_logits"], "float32") * _SPEED,
        )
        return -ops.sum(log2p)

    def _noise(self, state, like):
        return keras.random.uniform(
            ops.shape(like), minval=-0.5, maxval=0.5, dtype=like.dtype, seed=state["seed"]
        )

    def transform(self, state, value, training):
        z = self.latents(state, value)
        if training and self.relaxation == "noise":
            z = z + self._noise(state, z)
        elif training:
            z = z + ops.stop_gradient(ops.round(z) - z)
        else:
            z = ops.round(z)
        return _zeros_kept(value, self.decode(state, z))

    def finalize(self, state, value):
        value = ops.cast(value, "float32")
        z = ops.round(self.latents(state, value))
        return _zeros_kept(value, self.decode(state, z))

    def losses(self, state, value):
        if not self.rate_weight:
            return []
        z = ops.cast(self.latents(state, value), "float32")
        bits = self.bits(state, z + self._noise(state, z))
        return [self.rate_weight * bits / _BITS_PER_KILOBYTE]

    # -- host side ------------------------------------------------------------
    def update(self, items, context):
        """At `apply`: sets each weight's grid and prior from its values as they come in.

        During `fit` (it has no schedule) it does nothing: all is trained.
        """
        if context.step is not None:
            return
        for item in items:
            for path in item.paths:
                state = item.states[path]
                step, loc, log_scale, logits = _initial_state(
                    item.values[path], self.components, self.init_step
                )
                context.assign(state["step"], np.asarray(step, "float32"))
                context.assign(state["log_scale"], np.asarray(0.0, "float32"))
                if self.shift:
                    context.assign(state["offset"], np.asarray(0.0, "float32"))
                for name, host in (
                    ("prior_loc", loc),
                    ("prior_log_scale", log_scale),
                    ("prior_logits", logits),
                ):
                    context.assign(state[name], (host / _SPEED).astype("float32"))

    def get_config(self):
        config = super().get_config()
        config.update(
            rate_weight=self.rate_weight,
            components=self.components,
            init_step=self.init_step,
            relaxation=self.relaxation,
            shift=self.shift,
            biases=self.biases,
        )
        return config
