"""HSPG: the half-space projected gradient optimizer, for channels that end exactly at zero.

After Chen et al., "A Half-Space Stochastic Projected Gradient Method for
Group-Sparsity Regularization" (the optimizer of "Only Train Once", OTO).
The variables are split into groups, here the output channels of the
model's channel groups (`keras_condensa.optimizers.groups`): channel i of a
`ChannelGroup` is the i-th slice of every member (kernel column, bias
entry, BatchNorm `gamma` and `beta`). From `start_step` on, each step:

1. the candidates are the channels with the smallest normalised norm
   `||x_g|| / sqrt(size of x_g)`: `round(sparsity * channels)` of them over
   all groups (`scope="global"`) or in each group (`"layer"`), never every
   channel of one group;
2. a candidate's gradient gets the group-lasso term `penalty * x_g / ||x_g||`;
3. the base optimizer (SGD, Adam) steps;
4. the half-space projection: a candidate that left the half-space of its
   old value, `x_new_g . x_old_g < epsilon * ||x_old_g||^2`, is set to
   exactly zero; a candidate that was zero stays zero.

From `end_step` on every candidate is projected, so exactly the target
number of channels is zero (zero channels rank first, so they stay the
candidates). Steps are the optimizer's `iterations` before the update (0
for the first; with `gradient_accumulation_steps`, whole updates), so a
model saved mid-run and loaded continues on schedule. Everything runs in
the training step with `keras.ops` (no branching on tensor values), on
TensorFlow, JAX (`stateless_apply`) and PyTorch.
"""

import keras
import numpy as np
from keras import ops

from keras_condensa.optimizers.groups import as_groups, channel_groups, locate

SCOPES = ("global", "layer")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def check_arguments(sparsity, start_step, end_step, penalty, half_space_epsilon, scope):
    """Raises a clear error on a bad HSPG argument (see `HSPG`)."""
    if not _is_real(sparsity) or not 0 <= sparsity < 1:
        raise ValueError(
            "sparsity is the fraction of channels to zero and must be in [0, 1). "
            f"Received: sparsity={sparsity!r}"
        )
    if not _is_int(start_step) or start_step < 0:
        raise ValueError(
            f"start_step must be a non-negative int (an optimizer step). "
            f"Received: start_step={start_step!r}"
        )
    if end_step is not None and (not _is_int(end_step) or end_step < start_step):
        raise ValueError(
            "end_step must be None or an int >= start_step (the step from which every "
            f"candidate is zeroed). Received: start_step={start_step!r}, end_step={end_step!r}"
        )
    if not _is_real(penalty) or not penalty >= 0:
        raise ValueError(f"penalty must be a number >= 0. Received: penalty={penalty!r}")
    if not _is_real(half_space_epsilon) or not 0 <= half_space_epsilon < 1:
        raise ValueError(
            "half_space_epsilon must be in [0, 1) (0 projects a channel once its step points "
            f"away from it). Received: half_space_epsilon={half_space_epsilon!r}"
        )
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}. Received: scope={scope!r}")


def candidate_counts(groups, sparsity, scope):
    """How many channels are candidates: `[count]` (global) or one count per group (layer).

    Raises:
        ValueError: the count would take every channel of a group.
    """
    sizes = [g.size for g in groups]
    if scope == "global":
        total, most = sum(sizes), sum(sizes) - len(sizes)
        count = int(round(sparsity * total))
        if count > most:
            raise ValueError(
                f"sparsity={sparsity} asks for {count} of the {total} channels of "
                f"{len(sizes)} channel groups, but every group keeps at least one channel: at "
                f"most {most} can go (sparsity <= {most / total:.4f})."
            )
        return [count]
    counts = [int(round(sparsity * n)) for n in sizes]
    for group, count in zip(groups, counts, strict=True):
        if count >= group.size:
            raise ValueError(
                f"sparsity={sparsity} with scope='layer' asks for {count} of the {group.size} "
                f"channels of group '{group.name}', which keeps at least one: at most "
                f"{group.size - 1} can go there. Lower sparsity or use scope='global'."
            )
    return counts


def _read(x):
    return x.value if isinstance(x, keras.Variable) else x


def _along(vector, axis, rank):
    """`vector` (one entry per channel) shaped to broadcast along `axis` of a rank-`rank` tensor."""
    return ops.reshape(vector, [-1 if i == axis else 1 for i in range(rank)])


def _per_channel(x, axis):
    """Sums `x` over every axis but `axis`."""
    others = tuple(i for i in range(len(x.shape)) if i != axis)
    return ops.sum(x, axis=others) if others else x


def _ranks(scores):
    """The rank of each score, smallest first (0-based; ties get distinct ranks)."""
    return ops.argsort(ops.argsort(scores))


class HalfSpaceStep:
    """The HSPG step on top of a Keras optimizer (a mixin placed before it).

    Subclasses: `HSPG` (SGD) and `AdamHSPG` (Adam). Arguments as in `HSPG`.
    """

    def __init__(
        self,
        groups,
        sparsity=0.5,
        start_step=0,
        end_step=None,
        penalty=1e-3,
        half_space_epsilon=0.0,
        scope="global",
        **kwargs,
    ):
        check_arguments(sparsity, start_step, end_step, penalty, half_space_epsilon, scope)
        if kwargs.get("use_ema"):
            raise ValueError(
                f"{type(self).__name__} does not take use_ema=True: the moving average of the "
                "weights is not sparse, and Keras writes it over the weights at the end of fit."
            )
        groups = channel_groups(groups) if isinstance(groups, keras.Model) else as_groups(groups)
        counts = candidate_counts(groups, sparsity, scope)
        super().__init__(**kwargs)
        self.groups = tuple(groups)
        self.sparsity = float(sparsity)
        self.start_step = int(start_step)
        self.end_step = None if end_step is None else int(end_step)
        self.penalty = float(penalty)
        self.half_space_epsilon = float(half_space_epsilon)
        self.scope = scope
        self._counts = tuple(counts)
        self._located = None

    def build(self, variables):
        variables = list(variables)
        located = locate(self.groups, variables)
        super().build(variables)
        self._located = tuple(tuple(members) for members in located)
        # The number of weights in one channel of each group (its norm's normaliser).
        self._numels = tuple(
            sum(int(np.prod(variables[i].shape)) for i, _ in members) / group.size
            for group, members in zip(self.groups, located, strict=True)
        )

    def apply(self, grads, trainable_variables=None):
        """Applies one HSPG step (see the module docstring) and the base optimizer's update."""
        if not any(self._counts) or (trainable_variables is None and not self.built):
            return super().apply(grads, trainable_variables)  # plain steps (or Keras's error)
        if trainable_variables is None:
            variables = self._trainable_variables
            position = list(range(len(variables)))
        else:
            variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(variables)
            index = {id(v): i for i, v in enumerate(variables)}
            position = [index.get(id(v)) for v in self._trainable_variables]
        sets = [[(position[i], axis) for i, axis in members] for members in self._located]
        missing = [
            self.groups[g].members[m][0]
            for g, members in enumerate(sets)
            for m, (p, _) in enumerate(members)
            if p is None
        ]
        if missing:
            raise ValueError(
                f"{type(self).__name__}.apply got no gradient for the channel group members "
                f"{missing}: pass every variable the optimizer was built with."
            )
        step = _read(self.iterations)
        active = ops.greater_equal(step, self.start_step)
        final = (
            ops.greater_equal(step, self.end_step)
            if self.end_step is not None
            else ops.zeros((), "bool")
        )
        # A copy: on TensorFlow and PyTorch a read can alias the variable the step updates.
        old = {p: ops.cast(ops.copy(_read(variables[p])), "float32") for s in sets for p, _ in s}
        squares = [sum(_per_channel(ops.square(old[p]), axis) for p, axis in s) for s in sets]
        candidates = [ops.logical_and(c, active) for c in self._candidates(squares)]
        grads = list(grads)
        if self.penalty:
            scale = self.penalty * (self.loss_scale_factor or 1.0)
            for s, square, candidate in zip(sets, squares, candidates, strict=True):
                norm = ops.sqrt(square)
                live = ops.logical_and(candidate, ops.greater(norm, 0))
                coef = ops.where(live, scale / ops.where(live, norm, 1.0), 0.0)
                for p, axis in s:
                    if grads[p] is not None:
                        term = old[p] * _along(coef, axis, len(old[p].shape))
                        grads[p] = grads[p] + ops.cast(term, grads[p].dtype)
        result = super().apply(grads, trainable_variables)
        for s, square, candidate in zip(sets, squares, candidates, strict=True):
            new = {p: _read(variables[p]) for p, _ in s}
            dot = sum(_per_channel(ops.cast(new[p], "float32") * old[p], axis) for p, axis in s)
            left = ops.less(dot, self.half_space_epsilon * square)
            drop = ops.logical_or(ops.logical_or(left, ops.equal(square, 0)), final)
            drop = ops.logical_and(candidate, drop)
            for p, axis in s:
                keep = ops.logical_not(_along(drop, axis, len(new[p].shape)))
                self.assign(variables[p], ops.where(keep, new[p], ops.zeros((), new[p].dtype)))
        return result

    def _candidates(self, squares):
        """Per group, a bool vector: whether each channel is a candidate this step."""
        scores = [
            ops.sqrt(square / numel) for square, numel in zip(squares, self._numels, strict=True)
        ]
        if self.scope == "layer":
            return [
                ops.less(_ranks(score), count)
                for score, count in zip(scores, self._counts, strict=True)
            ]
        # Each group's largest channel is never a candidate: every group keeps one.
        guarded = [
            ops.where(ops.equal(ops.arange(self.groups[g].size), ops.argmax(score)), np.inf, score)
            for g, score in enumerate(scores)
        ]
        chosen = ops.less(_ranks(ops.concatenate(guarded)), self._counts[0])
        offsets = np.cumsum([0] + [g.size for g in self.groups])
        return [chosen[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def get_config(self):
        config = super().get_config()
        config.update(
            groups=[g.get_config() for g in self.groups],
            sparsity=self.sparsity,
            start_step=self.start_step,
            end_step=self.end_step,
            penalty=self.penalty,
            half_space_epsilon=self.half_space_epsilon,
            scope=self.scope,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_condensa")
class HSPG(HalfSpaceStep, keras.optimizers.SGD):
    """Half-space projected gradient on SGD (the paper's optimizer).

    Zeroes whole output channels of Dense and convolution layers while
    training, so that `kc.shrink` can remove them; see
    `keras_condensa.optimizers.hspg` for the step. The channels that are
    zero at the end are counted by `kc.optimizers.zero_channels`.

    Args:
        groups: a built Sequential or functional model (its channel groups,
            `kc.optimizers.channel_groups(model)`) or a list of
            `kc.optimizers.ChannelGroup` (or their `get_config()` dicts).
        sparsity: the fraction of channels to zero, in [0, 1): over all
            groups (`scope="global"`) or in each group (`"layer"`).
        start_step: the optimizer step from which the HSPG step runs
            (before it: plain SGD steps).
        end_step: the step from which every candidate is zeroed, so the
            target is reached exactly; `None`: never forced.
        penalty: the group-lasso weight (`penalty * x_g / ||x_g||` is added
            to a candidate's gradient), >= 0.
        half_space_epsilon: in [0, 1): a candidate whose new value has
            `x_new . x_old < half_space_epsilon * ||x_old||^2` is zeroed
            (the paper's epsilon; larger zeroes sooner).
        scope: `"global"` (one ranking over all channels) or `"layer"`.
        **kwargs: `keras.optimizers.SGD`'s arguments (`learning_rate`,
            `momentum`, ...); `use_ema=True` is refused.

    Raises:
        ValueError: a bad argument, a sparsity that would empty a group
            (the message says how many channels can go), a model with no
            channel group, or (when built) group members that are not
            among the trainable variables.
        TypeError: a subclassed model (pass a list of groups instead).

    Example:

    ```python
    optimizer = kc.optimizers.HSPG(model, sparsity=0.5, start_step=200, end_step=800,
                                   learning_rate=0.05, momentum=0.9)
    model.compile(optimizer, loss)
    model.fit(x, y, epochs=10)
    kc.optimizers.zero_channels(model, optimizer.groups)   # half of the channels
    small = kc.shrink(model)
    ```
    """


@keras.saving.register_keras_serializable(package="keras_condensa")
class AdamHSPG(HalfSpaceStep, keras.optimizers.Adam):
    """Half-space projected gradient on Adam.

    Arguments as in `kc.optimizers.HSPG`, with `keras.optimizers.Adam`'s
    arguments in `**kwargs` (its `epsilon` keeps its meaning).

    Example:

    ```python
    optimizer = kc.optimizers.AdamHSPG(model, sparsity=0.5, start_step=200, end_step=800)
    ```
    """
