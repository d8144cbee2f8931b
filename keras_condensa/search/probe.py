"""`Probe`: the cheap first step of the genetic search's fitness, no fine-tuning.

Hu et al. 2018 judge a chromosome in two steps: first the pruned model as it
is, on a small batch of training data; only the fittest are then fine-tuned.
`Probe` is the first step for a `CompressionTuner`'s scheme: it builds the
scheme from hyperparameter values, applies it to the dense model (one-shot
masks) and measures the top-1 accuracy on the batch and the cost. Its
BatchNormalization statistics are re-estimated on the batch first
(`kc.recalibrate_batchnorm`, unless the tuner does not recalibrate): pruned
channels shift the statistics the next layers see, and without this a BN
ResNet reads near chance at most ratios (on digits, keeping 80% of the
residual channels: 0.19 before, 0.95 after; fine-tuning recovers 0.99). When
the tuner shrinks, the cost is the multiply-accumulates the shrunk model
would keep, counted on the dense model's channel dependency graph
(`channel_cost.ChannelCost`) from the channels whose producers' kernels are
all zero: `kc.shrink` itself (a second or more per model on JAX) is not run.
Otherwise it is the nonzero parameters. Readings are cached by values.
"""

import keras
import numpy as np

from keras_condensa.channel_cost import ChannelCost, narrowable_groups
from keras_condensa.channel_rules import unwrapped
from keras_condensa.dependency import DependencyGraph
from keras_condensa.recalibrate import recalibrate_batchnorm
from keras_condensa.stripping import strip
from keras_condensa.summary import summary
from keras_condensa.workflows.measure import accuracy

DEFAULT_SAMPLES = 256


class Probe:
    """Accuracy on a small training batch and cost of a scheme's hyperparameter values.

    Args:
        tuner: a `CompressionTuner` (its `model`, `scheme`, `x_train`,
            `y_train`, `shrink` and `seed` are read).
        samples: training samples in the batch (a seeded random subset).
    """

    def __init__(self, tuner, samples=DEFAULT_SAMPLES):
        self.model = tuner.model
        self.scheme = tuner.scheme
        self.shrink = tuner.shrink
        rng = np.random.default_rng(tuner.seed or 0)
        n = len(tuner.x_train)
        pick = np.sort(rng.permutation(n)[: min(samples, n)])
        self.x, self.y = tuner.x_train[pick], tuner.y_train[pick]
        self.recalibrate = tuner.recalibrate
        self.readings = {}
        self.dense_accuracy = self._accuracy(self.model)
        if self.shrink:
            graph = DependencyGraph(self.model, on_unknown="skip")
            self._channels = ChannelCost(graph, "flops")
            self._groups = [
                (id(g), g.size, [unwrapped(p).name for p in g.producers])
                for g in narrowable_groups(graph)
            ]
        self.dense_cost = self._cost(self.model)

    def __call__(self, space, values):
        """`(accuracy, cost / dense cost)` of the scheme with these values, no fine-tuning.

        Args:
            space: the `keras_tuner.HyperParameters` the values belong to.
            values: a dict of hyperparameter name to value.

        Returns:
            A pair of floats; `(0.0, 1.0)` when the scheme cannot be built,
            applied or stripped with these values (the worst fitness, as the
            trial would fail).
        """
        key = tuple(sorted(values.items()))
        if key not in self.readings:
            self.readings[key] = self._measure(space, values)
        return self.readings[key]

    def _measure(self, space, values):
        hp = space.copy()
        hp.values = dict(values)
        try:  # The user's scheme builder: any exception fails these values only (as a trial).
            compressed = self.scheme(hp).apply(self.model)
            stripped = strip(compressed)
        except Exception:
            return 0.0, 1.0
        if self.recalibrate:  # one batch: its own statistics
            recalibrate_batchnorm(compressed, self.x, batch_size=len(self.x))
        reading = self._accuracy(compressed)
        cost = self._cost(stripped)
        return reading, cost / max(self.dense_cost, 1.0)

    def _accuracy(self, model):
        outputs = keras.ops.convert_to_numpy(model(self.x, training=False))
        if not np.all(np.isfinite(outputs)):
            return 0.0
        return accuracy(outputs, self.y)

    def _cost(self, model):
        if not self.shrink:
            return float(summary(model, print_fn=None).nonzeros)
        active = {}
        for key, size, names in self._groups:
            dead = np.ones(size, bool)
            for name in names:
                kernel = _kernel(model.get_layer(name))
                if kernel is None or kernel.shape[-1] != size:
                    dead[:] = False
                    break
                dead &= ~np.any(kernel.reshape(-1, size) != 0, axis=0)
            active[key] = size - int(dead.sum())
        return self._channels.total(active)


def _kernel(layer):
    for name in ("kernel", "depthwise_kernel"):
        variable = getattr(layer, name, None)
        if isinstance(variable, keras.Variable):
            return np.asarray(keras.ops.convert_to_numpy(variable))
    return None
