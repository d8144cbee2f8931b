"""`Prune`: unstructured magnitude pruning (Condensa's `Prune`)."""

import keras
import numpy as np

from keras_condensa import masks
from keras_condensa.operators.base import is_real
from keras_condensa.operators.mask import PruningOperator

SCOPES = ("global", "layer")


def check_scope(scope):
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}. Received: scope={scope!r}")


def check_min_density(min_layer_density):
    if not is_real(min_layer_density) or not 0 <= min_layer_density <= 1:
        raise ValueError(
            "min_layer_density must be in [0, 1]. "
            f"Received: min_layer_density={min_layer_density!r}"
        )


@keras.saving.register_keras_serializable(package="keras_condensa")
class Prune(PruningOperator):
    """Unstructured magnitude pruning: keep the largest-magnitude weights.

    Args:
        density: fraction of weights to keep, in (0, 1].
        scope: `"global"` (default, as Condensa) ranks all covered weights
            under one threshold; `"layer"` keeps `density` of each weight.
        min_layer_density: with global scope, the least fraction any one
            weight keeps, so that one small layer is not wiped out.
        prune_bias: also prune biases (default `False`).
        schedule: optional pruning schedule (see `kc.PolynomialDecay`).
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave dense.

    Example:

    ```python
    scheme = kc.Prune(density=0.1, exclude=["logits"])
    pruned = scheme.apply(model)
    ```
    """

    scheme_word = "prune"
    scheme_args = ("D",)
    scheme_help = "unstructured magnitude pruning: keep fraction D of the weights"

    def __init__(
        self,
        density,
        scope="global",
        min_layer_density=0.0,
        prune_bias=False,
        schedule=None,
        include=None,
        exclude=None,
    ):
        super().__init__(density, schedule=schedule, include=include, exclude=exclude)
        check_scope(scope)
        check_min_density(min_layer_density)
        self.scope = scope
        self.min_layer_density = float(min_layer_density)
        self.prune_bias = bool(prune_bias)

    def paths(self, layer, spec):
        paths = list(spec.weights)
        if self.prune_bias and spec.bias:
            paths.append(spec.bias)
        return tuple(paths)

    def compute_masks(self, items, density):
        keys, values = [], []
        for item in items:
            for path in item.paths:
                keys.append((id(item.wrapper), path))
                values.append(item.values[path])
        if self.scope == "layer":
            return {
                k: masks.magnitude_mask(v, density) for k, v in zip(keys, values, strict=True)
            }
        scores = [np.abs(v) for v in values]
        counts = masks.global_keep_counts(scores, density, self.min_layer_density)
        return {k: masks.topk_mask(s, c) for k, s, c in zip(keys, scores, counts, strict=True)}

    def get_config(self):
        config = super().get_config()
        config.update(
            scope=self.scope, min_layer_density=self.min_layer_density, prune_bias=self.prune_bias
        )
        return config
