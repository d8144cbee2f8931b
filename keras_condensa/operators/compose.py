"""`Compose`: chains operators into one scheme (Condensa's `Compose`)."""

from keras_condensa.operators.base import Operator


class Compose(Operator):
    """Applies several operators in order to the same model.

    Pruning operators run in order, each on the weights the previous ones
    left; a layer covered by several operators gets one wrapper whose mask is
    the product of theirs.

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
        self._operators = list(operators)

    def operators(self):
        return [leaf for op in self._operators for leaf in op.operators()]

    def selects(self, layer):
        return any(op.selects(layer) for op in self.operators())

    def get_config(self):
        return {"operators": self._operators}
