"""`Compose`: chains operators into one scheme (Condensa's `Compose`)."""

import warnings

import keras

from keras_condensa.operators.base import Operator


@keras.saving.register_keras_serializable(package="keras_condensa")
class Compose(Operator):
    """Applies several operators in order to the same model.

    Operators run in order: a weight covered by several is transformed by
    each in turn (`w -> op1.transform -> op2.transform`), and each operator's
    `update` sees the weights the previous ones left, so masks multiply.
    Quantization comes after pruning, as in Condensa's
    `Compose([Prune, Quantize])`, so its ranges are those of the masked
    weights: a list that quantizes first is reordered, with a warning.

    Args:
        operators: a list of operators (or nested `Compose`).

    Example:

    ```python
    scheme = kc.Compose([kc.FilterPrune(0.5), kc.Prune(0.2)])
    compressed = scheme.apply(model)
    ```
    """

    def __init__(self, operators):
        if isinstance(operators, Operator) or not operators:
            raise ValueError(
                "Compose takes a non-empty list of operators, e.g. "
                f"kc.Compose([kc.Prune(0.1), kc.NMPrune(2, 4)]). Received: {operators!r}"
            )
        for op in operators:
            if not isinstance(op, Operator):
                raise TypeError(f"Compose takes keras_condensa operators. Received: {op!r}")
        super().__init__()
        leaves = [leaf for op in operators for leaf in op.operators()]
        ordered = [op for op in leaves if op.prunes] + [op for op in leaves if not op.prunes]
        if ordered != leaves:
            warnings.warn(
                "Compose lists quantization before pruning; pruning runs first so that the "
                f"quantizer's ranges are those of the masked weights. Order used: {ordered}",
                stacklevel=2,
            )
        self._operators = ordered

    def operators(self):
        return list(self._operators)

    def apply(self, model):
        """Returns a new model with the covered layers wrapped (see `Operator.apply`).

        Raises:
            ValueError: the list holds a post-training `Quantize`, which
                quantizes a plain model after compression and has no wrapper
                to build (it would silently become quantization-aware
                training).
        """
        for op in self._operators:
            if getattr(op, "mode", "qat") != "qat":
                raise ValueError(
                    f"Compose cannot apply {op!r}: post-training quantization runs "
                    "keras.Model.quantize on a plain model after compression, not during "
                    "fine-tuning. Compose the rest, fine-tune, strip, then apply it: "
                    f"kc.Quantize({op.dtype!r}, mode='post_training').apply(kc.strip(model)); "
                    f"or use kc.Quantize({op.dtype!r}) for quantization-aware training."
                )
        return super().apply(model)

    def selects(self, layer):
        return any(op.selects(layer) for op in self.operators())

    def get_config(self):
        return {"operators": [keras.saving.serialize_keras_object(op) for op in self._operators]}
