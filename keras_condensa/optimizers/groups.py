"""The channel groups an optimizer can sparsify: coupled output channels, as variable slices.

A `ChannelGroup` is one group of coupled output channels of the channel
dependency graph (`keras_condensa.dependency`), written down as the slices
of variables that hold them: the producers' kernels along their output axis,
their biases, and the `gamma` and `beta` of a BatchNormalization that
follows. Channel i of the group is the i-th slice of every member; zeroing
it in every member removes one channel that `kc.shrink` can cut out.

Members are named by their Keras variable paths (`"conv1/kernel"`), so a
group list is plain data: an optimizer stores it in its config and finds its
variables again after a model is saved and loaded.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_condensa import dependency, prunable
from keras_condensa.graph_walk import is_graph_model

# Layers whose per-channel weights follow the channels they normalize.
_FOLLOWERS = (keras.layers.BatchNormalization,)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Coupled output channels: channel i is slice i of every member.

    Args:
        size: the number of channels.
        members: `((variable path, axis), ...)`: each variable holds the
            group's channels along `axis` (a non-negative int).
    """

    size: int
    members: tuple

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise TypeError(f"ChannelGroup size must be an int. Received: size={self.size!r}")
        if self.size < 1:
            raise ValueError(f"ChannelGroup size must be >= 1. Received: size={self.size}")
        members = tuple((str(path), int(axis)) for path, axis in self.members)
        if not members:
            raise ValueError("A ChannelGroup needs at least one (variable path, axis) member.")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "members", members)

    @property
    def name(self):
        """The group as messages name it: its first member's path."""
        return self.members[0][0]

    def get_config(self):
        """The group as plain JSON data: `{"size": n, "members": [[path, axis], ...]}`."""
        return {"size": self.size, "members": [[path, axis] for path, axis in self.members]}

    @classmethod
    def from_config(cls, config):
        return cls(size=config["size"], members=tuple(tuple(m) for m in config["members"]))


def as_groups(groups):
    """A list of `ChannelGroup`s from groups or their configs (dicts).

    Raises:
        TypeError: an entry is neither.
        ValueError: an empty list, or a variable in two groups.
    """
    if isinstance(groups, (ChannelGroup, dict)):
        groups = [groups]
    out = []
    for group in groups:
        if isinstance(group, dict):
            group = ChannelGroup.from_config(group)
        if not isinstance(group, ChannelGroup):
            raise TypeError(
                "groups must be a model or a list of ChannelGroup (or their get_config() "
                f"dicts). Received an entry {group!r}"
            )
        out.append(group)
    if not out:
        raise ValueError("groups is empty: give a model or at least one ChannelGroup.")
    seen = {}
    for group in out:
        for path, _ in group.members:
            if path in seen:
                raise ValueError(
                    f"Variable '{path}' is a member of two channel groups ('{seen[path]}' and "
                    f"'{group.name}'); a variable belongs to one group."
                )
            seen[path] = group.name
    return out


def _supported(layer, group):
    """The `(channel weight, bias)` paths of a producer of `group`, or `None`."""
    spec = prunable.prune_spec(dependency.unwrapped(layer))
    if (
        spec is None
        or spec.kind not in ("neuron", "filter")
        or spec.prefix
        or not spec.channel_weight
        or len(spec.channel_axes) != 1
    ):
        return None
    return spec


def _member(layer, path, axis, size):
    """`(variable path, axis)` of the weight at attribute `path`, or `None`.

    `None` when the weight does not hold `size` channels along `axis`, or is frozen.
    """
    variable = prunable.resolve(dependency.unwrapped(layer), path)
    axis = axis % len(variable.shape)
    if variable.shape[axis] != size or not variable.trainable:
        return None
    return (variable.path, axis)


def channel_groups(model, select=None):
    """The channel groups of a Sequential or functional model.

    One `ChannelGroup` per group of coupled output channels of the channel
    dependency graph, as structured pruning (`kc.FilterPrune`,
    `kc.NeuronPrune`) decides them: every producer's kernel along its
    output-channel axis and its bias, and the `gamma` and `beta` of each
    BatchNormalization that normalizes exactly those channels. Groups that
    reach a model output, that the graph cannot follow (frozen), or that
    have a producer whose channels span several kernel axes
    (DepthwiseConv2D) or sit in a custom layer are left out. A model returned
    by `scheme.apply` has the groups of the original: a
    `kc.CompressionWrapper` counts as the layer it wraps.

    Args:
        model: a built Sequential or functional model.
        select: optional `select(layer) -> bool` on the (unwrapped) layers: a
            group with a producer it rejects is left out, and a
            BatchNormalization it rejects is left out of its group.

    Returns:
        A list of `ChannelGroup`, producers first in graph order.

    Raises:
        TypeError: `model` is not a Keras model, or is subclassed.
        ValueError: the model is not built, or has no channel group.

    Example:

    ```python
    groups = kc.optimizers.channel_groups(model)
    groups[0]  # ChannelGroup(size=16, members=(('conv1/kernel', 3), ('conv1/bias', 0)))
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"channel_groups expects a keras.Model. Received: {type(model).__name__}")
    if not is_graph_model(model):
        raise TypeError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: its "
            "channel groups come from the layer graph of a Sequential or functional model. "
            "Build it as one, or pass a list of kc.optimizers.ChannelGroup."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built. Give it an Input (keras.Input(shape)) or call "
            "model.build(input_shape) first."
        )
    graph = dependency.DependencyGraph(model, on_unknown="skip")
    found = {}  # id(root) -> (root, [members])
    for group in graph.groups:
        if group.frozen is not None or not group.producers:
            continue
        members = []
        for layer in group.producers:
            spec = _supported(layer, group)
            if spec is None or (select is not None and not select(dependency.unwrapped(layer))):
                members = None
                break
            weight = _member(layer, spec.channel_weight, spec.channel_axes[0], group.size)
            if weight is None:
                members = None
                break
            members.append(weight)
            if spec.bias:
                members.append(_member(layer, spec.bias, 0, group.size))
        if members and None not in members:
            found[id(group)] = (group, members)
    for layer, _, _ in graph.nodes:
        inner = dependency.unwrapped(layer)
        if not isinstance(inner, _FOLLOWERS) or (select is not None and not select(inner)):
            continue
        layout = graph.channels_of(layer)
        if layout is None or len(layout.segments) != 1:
            continue
        root = layout.segments[0].root()
        if id(root) in found:
            for path in ("gamma", "beta"):
                if getattr(inner, path, None) is not None:
                    member = _member(layer, path, 0, root.size)
                    if member is not None:
                        found[id(root)][1].append(member)
    order = {id(layer): i for i, (layer, _, _) in enumerate(graph.nodes)}
    groups = sorted(found.values(), key=lambda item: min(order[id(p)] for p in item[0].producers))
    if not groups:
        raise ValueError(
            f"Model '{model.name}' has no channel group to sparsify. Groups are the output "
            "channels (units, filters) of Dense and Conv* layers (Conv1D/2D/3D, their "
            "transposes, SeparableConv) that do not reach a model output; channels the model "
            "outputs are never removed. Give the model a hidden Dense or convolution layer."
        )
    return [ChannelGroup(group.size, tuple(members)) for group, members in groups]


def _matches(path, candidate):
    """Whether two variable paths name the same variable, up to an outer model's prefix.

    A Sequential model's variables are `"sequential/fc1/kernel"` when it is
    built and `"fc1/kernel"` once loaded from a `.keras` file.
    """
    return path == candidate or candidate.endswith("/" + path) or path.endswith("/" + candidate)


def locate(groups, variables):
    """Finds the members of `groups` among `variables`.

    Args:
        groups: a list of `ChannelGroup`.
        variables: a list of `keras.Variable`.

    Returns:
        Per group, `[(index into variables, axis), ...]`.

    Raises:
        ValueError: a member path matches no variable, or several, or the
            variable does not have the group's size along the member's axis.
    """
    paths = [v.path for v in variables]
    exact = {p: i for i, p in enumerate(paths)}
    located, missing = [], []
    for group in groups:
        members = []
        for path, axis in group.members:
            if path in exact:
                index = exact[path]
            else:
                hits = [i for i, p in enumerate(paths) if _matches(path, p)]
                if len(hits) != 1:
                    missing.append(path if not hits else f"{path} (matches {len(hits)})")
                    continue
                index = hits[0]
            shape = variables[index].shape
            if axis >= len(shape) or shape[axis] != group.size:
                raise ValueError(
                    f"Channel group '{group.name}' has {group.size} channels but its member "
                    f"'{path}' has shape {tuple(shape)} (axis {axis}). The groups were made for "
                    "another model: make them from this one (channel_groups(model))."
                )
            members.append((index, axis))
        located.append(members)
    if missing:
        shown = ", ".join(paths[:8]) + (", ..." if len(paths) > 8 else "")
        raise ValueError(
            f"The channel groups name variables that are not among the trainable variables: "
            f"{missing}. The variables are: {shown}. Make the groups from the model being "
            "trained (channel_groups(model)), and keep its layers trainable."
        )
    return located


def zero_channels(model, groups=None):
    """Counts the channels that are exactly zero in every member of their group.

    Args:
        model: the model holding the variables (wrapped or plain).
        groups: a list of `ChannelGroup`; `None` uses `channel_groups(model)`.

    Returns:
        An int: the number of channels (over all groups) whose every weight
        is exactly 0. `kc.shrink` removes those of producers with a zero
        kernel slice.

    Example:

    ```python
    kc.optimizers.zero_channels(model, optimizer.groups)  # 24
    ```
    """
    groups = channel_groups(model) if groups is None else as_groups(groups)
    variables = list(model.variables)
    count = 0
    for group, members in zip(groups, locate(groups, variables), strict=True):
        zero = np.ones(group.size, bool)
        for index, axis in members:
            value = np.asarray(ops.convert_to_numpy(variables[index]))
            rows = np.moveaxis(value, axis, -1).reshape(-1, group.size)
            zero &= ~np.any(rows != 0, axis=0)
        count += int(zero.sum())
    return count
