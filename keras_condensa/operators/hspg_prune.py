"""`HSPGPrune`: neurons and filters removed by training with the HSPG optimizer.

Structured pruning (`kc.NeuronPrune`, `kc.FilterPrune`) chooses the channels
by magnitude and masks them. `HSPGPrune` lets the optimizer choose: trained
with the optimizer `training_optimizer` returns (`kc.optimizers.HSPG` or
`AdamHSPG` on the same channel groups), the least useful channels are driven
to exactly zero during the run (half-space projection). The operator holds
the settings, and on the last step of `fit` (with `kc.callbacks(scheme)`)
turns the channels that are exactly zero into masks, so that they stay zero
in any later training and `kc.summary` reports them. `kc.strip(...,
shrink=True)` and `kc.shrink` remove them.
"""

import keras
import numpy as np
from keras import ops

from keras_condensa import masks
from keras_condensa.operators.base import is_real
from keras_condensa.operators.structured import _ChannelPrune, expand_keeps
from keras_condensa.optimizers.groups import channel_groups
from keras_condensa.optimizers.hspg import HSPG, AdamHSPG, check_arguments
from keras_condensa.schedules import ConstantSparsity

BASES = (None, "sgd", "adam")
# The HSPG arguments of an optimizer config: not the base optimizer's.
_OWN = ("groups", "sparsity", "start_step", "end_step", "penalty", "half_space_epsilon", "scope")


def _check_fraction(name, value):
    if not is_real(value) or not 0 <= value < 1:
        raise ValueError(
            f"{name} is a fraction of the training run and must be in [0, 1) (the last step "
            f"turns the zero channels into masks). Received: {name}={value!r}"
        )


@keras.saving.register_keras_serializable(package="keras_condensa")
class HSPGPrune(_ChannelPrune):
    """Keeps a fraction of the neurons and filters, the rest zeroed by the HSPG optimizer.

    Apply the scheme, then compile with `scheme.training_optimizer(...)`: it
    returns `kc.optimizers.HSPG` (SGD) or `AdamHSPG` on the channel groups of
    the layers the scheme covers. From `start` to `end` (fractions of the
    run) the optimizer pushes the smallest channels to zero and projects
    those that cross zero; at `end` every remaining candidate is zeroed, so
    exactly `round((1 - density) * channels)` channels are zero (over all
    groups; every group keeps one channel). Fit with `kc.callbacks(scheme)`:
    on the last step the zero channels become masks.

    Args:
        density: the fraction of channels to keep, in (0, 1] (`"hspg:0.5"`
            keeps half). The optimizer's `sparsity` is `1 - density`.
        start: the fraction of the run after which the HSPG step starts.
        end: the fraction of the run from which the candidates are zeroed,
            in [start, 1).
        penalty: the group-lasso weight, >= 0.
        epsilon: the half-space threshold, in [0, 1) (the optimizer's
            `half_space_epsilon`).
        base: `"sgd"` (`HSPG`), `"adam"` (`AdamHSPG`), or `None`: SGD when the
            optimizer given to `training_optimizer` is an SGD, else Adam.
        learning_rate: the learning rate; `None` takes the given optimizer's.
        scope: `"global"` (one ranking of all channels) or `"layer"`.
        include, exclude: as in `kc.NeuronPrune`. A group of coupled
            channels is trained sparse only when all its producers are covered.

    Example:

    ```python
    scheme = kc.HSPGPrune(density=0.5)
    pruned = scheme.apply(model)
    steps = epochs * math.ceil(len(x) / batch_size)
    pruned.compile(scheme.training_optimizer(pruned, keras.optimizers.Adam(1e-3), steps), loss)
    pruned.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=kc.callbacks(scheme))
    small = kc.strip(pruned, shrink=True)
    ```
    """

    scheme_word = "hspg"
    scheme_args = ("D",)
    scheme_help = (
        "keep fraction D of the neurons and filters; the HSPG optimizer zeroes the rest while "
        "training"
    )
    kinds = ("neuron", "filter")
    default_scope = "global"

    def __init__(
        self,
        density,
        start=0.3,
        end=0.8,
        penalty=1e-3,
        epsilon=0.0,
        base=None,
        learning_rate=None,
        scope="global",
        include=None,
        exclude=None,
    ):
        # Once, on the last step of a fit: the zero channels become masks.
        last_step = ConstantSparsity(begin_step=1.0, end_step=1.0, frequency=1.0)
        super().__init__(density, scope=scope, schedule=last_step, include=include, exclude=exclude)
        _check_fraction("start", start)
        _check_fraction("end", end)
        if end < start:
            raise ValueError(f"end must be >= start. Received: start={start}, end={end}")
        if not is_real(epsilon) or not 0 <= epsilon < 1:
            raise ValueError(
                f"epsilon is the half-space threshold and must be in [0, 1). "
                f"Received: epsilon={epsilon!r}"
            )
        check_arguments(1.0 - self.density, 0, None, penalty, 0.0, self.scope)
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}. Received: base={base!r}")
        if learning_rate is not None and (not is_real(learning_rate) or learning_rate <= 0):
            raise ValueError(
                f"learning_rate must be a positive number or None (the given optimizer's). "
                f"Received: learning_rate={learning_rate!r}"
            )
        self.start = float(start)
        self.end = float(end)
        self.penalty = float(penalty)
        self.epsilon = float(epsilon)
        self.base = base
        self.learning_rate = None if learning_rate is None else float(learning_rate)

    def training_optimizer(self, model, base_optimizer=None, total_steps=None):
        """The HSPG optimizer that trains `model`'s covered channels sparse.

        Args:
            model: the model `apply` returned (or the original: the groups are
                the same).
            base_optimizer: optional `keras.optimizers.Optimizer` whose settings
                it copies: all of them when it is of the base's kind (SGD for
                `HSPG`, Adam for `AdamHSPG`), else its learning rate.
            total_steps: the optimizer steps of the whole training run
                (`epochs * steps_per_epoch`); `start` and `end` are fractions
                of it.

        Returns:
            A new `kc.optimizers.HSPG` or `kc.optimizers.AdamHSPG`.

        Raises:
            ValueError: bad `total_steps`, a model with no channel group the
                scheme covers, or a density that would empty a group.
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)):
            raise ValueError(
                "total_steps must be the number of optimizer steps of the run (epochs * "
                f"steps per epoch), an int >= 1. Received: total_steps={total_steps!r}"
            )
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1. Received: total_steps={total_steps}")
        kind = self.base or ("sgd" if isinstance(base_optimizer, keras.optimizers.SGD) else "adam")
        cls, parent = (
            (HSPG, keras.optimizers.SGD) if kind == "sgd" else (AdamHSPG, keras.optimizers.Adam)
        )
        config = {}
        if base_optimizer is not None:
            source = base_optimizer.get_config()
            if isinstance(base_optimizer, parent):
                config = {k: v for k, v in source.items() if k != "name" and k not in _OWN}
            else:
                config = {"learning_rate": source["learning_rate"]}
        if self.learning_rate is not None:
            config["learning_rate"] = self.learning_rate
        last = total_steps - 1
        config.update(
            groups=[g.get_config() for g in channel_groups(model, select=self.selects)],
            sparsity=1.0 - self.density,
            start_step=int(round(self.start * last)),
            end_step=int(round(self.end * last)),
            penalty=self.penalty,
            half_space_epsilon=self.epsilon,
            scope=self.scope,
        )
        return cls.from_config(config)

    def build(self, wrapper, path, variable):
        state = super().build(wrapper, path, variable)
        # 1 once an update found channels at zero (the optimizer did its work).
        state["found"] = wrapper.add_weight(
            name=f"{path.replace('.', '_')}_hspg_found",
            shape=(),
            initializer="zeros",
            trainable=False,
        )
        return state

    def ran(self, state):
        # A layer whose masks keep all is not "never pruned" once the run zeroed channels.
        return float(np.asarray(ops.convert_to_numpy(state["found"]))) > 0

    def update(self, items, context):
        """Masks the channels that are exactly zero now (see `compute_masks`)."""
        super().update(items, context)
        if any(not np.all(mask) for mask in context.assigned.values()):
            for item in items:
                for path in item.paths:
                    context.assign(item.states[path]["found"], np.ones((), "float32"))

    def compute_masks(self, items, density, graph=None):
        """Masks the channels that are exactly zero (whatever `density`).

        A channel is zero when its kernel slice is zero in every producer of
        its group; a BatchNormalization after it is masked with it.

        Returns:
            A dict `{(id(wrapper), path): mask}`.
        """
        units, followers = self._units(items, graph)
        keeps = []
        for _, members in units:
            live = np.zeros(members[0][-1].size, bool)
            for _, spec, _, current, _ in members:
                live |= masks.channel_scores(current[spec.channel_weight], spec.channel_axes) > 0
            keeps.append(live.astype("float32"))
        return expand_keeps(units, followers, keeps)

    def get_config(self):
        config = super().get_config()
        for key in ("schedule", "criterion", "align", "min_layer_density", "prune_bias"):
            config.pop(key)
        config.update(
            start=self.start,
            end=self.end,
            penalty=self.penalty,
            epsilon=self.epsilon,
            base=self.base,
            learning_rate=self.learning_rate,
        )
        return config
