"""What an operator's host-side `update` receives: `Item`s and an `UpdateContext`.

Kept apart from the operators so that the code that drives updates
(`keras_condensa.masking`) does not import the operators package.
"""

import dataclasses


@dataclasses.dataclass
class Item:
    """The weights an operator covers in one layer, as `Operator.update` sees them.

    Attributes:
        wrapper: the `kc.CompressionWrapper` holding the layer.
        spec: the layer's `kc.PruneSpec` (paths relative to the wrapper's
            layer), or `None` for a layer that follows others (a
            BatchNormalization under structured pruning).
        paths: the weights' attribute paths.
        values: `{path: NumPy array}`, the weights as the operators before
            this one leave them.
        states: `{path: state}`, what `Operator.build` returned.
    """

    wrapper: object
    spec: object
    paths: tuple
    values: dict
    states: dict


class UpdateContext:
    """What `Operator.update` knows about the moment it runs.

    Attributes:
        step: the schedule's step (`None` at `apply` time).
        schedule: the operator's schedule resolved for this fit, or `None`.
        model: the wrapped model.

    Made by `keras_condensa.masking.update`, which drives the updates.
    """

    def __init__(self, model, step=None, schedule=None, graph_fn=None):
        self.model = model
        self.step = step
        self.schedule = schedule
        self._graph_fn = graph_fn
        self.assigned = {}

    @property
    def graph(self):
        """The model's channel dependency graph (`None` for a subclassed model)."""
        return self._graph_fn() if self._graph_fn is not None else None

    def assign(self, variable, value):
        """Assigns a host value (a NumPy array) to a state variable.

        The driver then uses the value it already has instead of reading the
        variable back from the device (reads dominate the cost of an update).
        """
        variable.assign(value)
        self.assigned[id(variable)] = value
