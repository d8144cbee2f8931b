"""Structured pruning: whole neurons (Dense units) and filters (conv channels).

After Condensa's `NeuronPrune`, `FilterPrune` and `StructurePrune`. A removed
structure is an output channel: its column of the kernel and its bias entry
are zeroed, so the channel outputs `activation(0)`.

Channels are chosen so that `kc.shrink` can remove them. Following the
channel dependency graph (`keras_condensa.dependency`), output channels that
are coupled (the convolutions whose outputs meet at a residual `Add`, a
DepthwiseConv2D and the convolution that feeds it) form one group: channel i
of the group is scored by the mean of its members' scores and kept or pruned
in all of them at once. Channels that reach a model output are never pruned.
A BatchNormalization on pruned channels has their `gamma` and `beta` masked
too, so a pruned channel is exactly zero after it whatever its moving
statistics, in training and in inference.
"""

import keras
import numpy as np
from keras import ops

from keras_condensa import dependency, masks
from keras_condensa.operators.base import _matches
from keras_condensa.operators.mask import PruningOperator
from keras_condensa.operators.prune import check_min_density, check_scope

# Layers with per-channel weights that follow the mask of the channels they receive.
_FOLLOWERS = (keras.layers.BatchNormalization,)


def _follower_paths(layer):
    return tuple(name for name, on in (("gamma", layer.scale), ("beta", layer.center)) if on)


def _batchnorm_scale(layer, current):
    """Per channel: how much a BatchNormalization in inference scales its input."""
    variance = np.asarray(ops.convert_to_numpy(layer.moving_variance), "float32")
    gamma = current.get("gamma", np.ones_like(variance))
    return np.abs(gamma) / np.sqrt(variance + layer.epsilon)


def expand_keeps(units, followers, keeps):
    """Masks of every covered weight from one 0/1 keep vector per unit.

    Args:
        units: `[(group or None, members)]` as `_ChannelPrune._units` makes them.
        followers: the BatchNormalization items that follow the groups' channels.
        keeps: per unit, a 0/1 vector over its channels.

    Returns:
        A dict `{(id(wrapper), path): mask}`.
    """
    result, kept = {}, {}
    for (group, members), keep in zip(units, keeps, strict=True):
        if group is not None:
            kept[id(group)] = keep
        for wrapper, spec, paths, current, _ in members:
            result[(id(wrapper), spec.channel_weight)] = masks.expand_channel_mask(
                keep, current[spec.channel_weight], spec.channel_axes
            )
            if spec.bias in paths:
                result[(id(wrapper), spec.bias)] = masks.expand_channel_mask(
                    keep, current[spec.bias], (0,)
                )
    for wrapper, layout, paths, current in followers:
        keep = np.concatenate(
            [kept.get(id(seg.root()), np.ones(seg.size, "float32")) for seg in layout.segments]
        )
        for path in paths:
            result[(id(wrapper), path)] = masks.expand_channel_mask(keep, current[path], (0,))
    return result


class _ChannelPrune(PruningOperator):
    kinds = ()
    default_scope = "layer"

    def __init__(
        self,
        density,
        criterion="l2",
        align=None,
        scope=None,
        min_layer_density=0.0,
        prune_bias=True,
        schedule=None,
        include=None,
        exclude=None,
    ):
        super().__init__(density, schedule=schedule, include=include, exclude=exclude)
        masks.check_criterion(criterion)
        if align is not None and (
            isinstance(align, bool) or not isinstance(align, int) or align < 1
        ):
            raise ValueError(f"align must be a positive int or None. Received: align={align!r}")
        scope = scope or self.default_scope
        check_scope(scope)
        check_min_density(min_layer_density)
        self.criterion = criterion
        self.align = align
        self.scope = scope
        self.min_layer_density = float(min_layer_density)
        self.prune_bias = bool(prune_bias)

    # `update` passes the model's channel dependency graph to `compute_masks`.
    coupled_channels = True

    def selects(self, layer):
        # A BatchNormalization follows the channels of the layers it normalizes,
        # whatever include= names; exclude= can still leave it out.
        if isinstance(layer, _FOLLOWERS):
            return not _matches(layer, self.exclude)
        return super().selects(layer)

    def reason_unsupported(self, layer, spec):
        if isinstance(layer, _FOLLOWERS):
            rule = dependency.channel_rule(layer)
            why = rule.check(layer) if rule.check else None
            return why or (None if _follower_paths(layer) else "no gamma or beta to mask")
        reason = super().reason_unsupported(layer, spec)
        if reason is None and spec.kind not in self.kinds:
            wanted = " or ".join(self.kinds)
            reason = f"{type(layer).__name__} has no {wanted} structure to remove"
        return reason

    def paths(self, layer, spec):
        if isinstance(layer, _FOLLOWERS):
            return _follower_paths(layer)
        paths = [spec.channel_weight]
        if self.prune_bias and spec.bias:
            paths.append(spec.bias)
        return tuple(paths)

    def compute_masks(self, items, density, graph=None):
        """Masks whole channels; see `MaskOperator.compute_masks`.

        Args:
            items: as in `MaskOperator.compute_masks`.
            density: the fraction of channels to keep, per group (`"layer"`
                scope) or over all groups (`"global"`).
            graph: the model's `dependency.DependencyGraph`: coupled
                channels share one mask and channels that reach a model
                output are kept. `None` scores every layer on its own.

        Returns:
            A dict `{(id(wrapper), path): mask}`.
        """
        units, followers = self._units(items, graph)
        scores = [np.mean([score for *_, score in members], axis=0) for _, members in units]
        if not scores:
            counts = []
        elif self.scope == "global":
            aligns = [self.align] * len(scores) if self.align else None
            counts = masks.global_keep_counts(scores, density, self.min_layer_density, aligns)
        else:
            counts = [masks.keep_count(density, s.size, self.align) for s in scores]
        keeps = [masks.topk_mask(s, c) for s, c in zip(scores, counts, strict=True)]
        return expand_keeps(units, followers, keeps)

    def _units(self, items, graph):
        """Splits items into scored units `[(group or None, members)]` and followers.

        A member is an item with its channel scores appended; members of one
        group share its mask. Groups that reach a model output are left out.
        A producer followed by a BatchNormalization is scored with the
        BatchNorm folded in (its weights times `|gamma| / sqrt(var + eps)`):
        the BatchNorm undoes the scale of the weights before it.
        """
        units, by_group, followers, scales = [], {}, [], {}
        # A layer nested in a custom layer is outside the model's graph: scored on its own.
        for wrapper, spec, paths, current in (
            (i.wrapper, i.spec, i.paths, i.values) for i in items
        ):
            nested = spec is not None and spec.prefix
            layout = graph.channels_of(wrapper) if graph is not None and not nested else None
            if isinstance(wrapper.layer, _FOLLOWERS) and layout is not None:
                followers.append((wrapper, layout, paths, current))
                if graph.previous(wrapper) is not None:
                    scales[id(graph.previous(wrapper))] = _batchnorm_scale(wrapper.layer, current)
        for wrapper, spec, paths, current in (
            (i.wrapper, i.spec, i.paths, i.values) for i in items
        ):
            if isinstance(wrapper.layer, _FOLLOWERS):
                continue
            score = masks.channel_scores(
                current[spec.channel_weight], spec.channel_axes, self.criterion
            )
            # A BatchNorm after a custom layer scales its output, not its nested layers.
            if id(wrapper) in scales and not spec.prefix and scales[id(wrapper)].size == score.size:
                score = score * scales[id(wrapper)]
            layout = graph.channels_of(wrapper) if graph is not None and not spec.prefix else None
            member = (wrapper, spec, paths, current, score)
            group = layout.segments[0].root() if layout and len(layout.segments) == 1 else None
            if group is None or group.size != score.size:
                units.append((None, [member]))
            elif graph.feeds_output(group):
                continue
            elif id(group) in by_group:
                by_group[id(group)][1].append(member)
            else:
                by_group[id(group)] = (group, [member])
                units.append(by_group[id(group)])
        return units, followers

    def get_config(self):
        config = super().get_config()
        config.update(
            criterion=self.criterion,
            align=self.align,
            scope=self.scope,
            min_layer_density=self.min_layer_density,
            prune_bias=self.prune_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_condensa")
class NeuronPrune(_ChannelPrune):
    """Removes whole neurons (output units of Dense and EinsumDense layers).

    Neurons coupled across layers (outputs added together) are one group,
    kept or removed in every layer at once; neurons that reach a model
    output are kept; a BatchNormalization after removed neurons has their
    `gamma` and `beta` masked. So `kc.shrink` can remove what is pruned.

    Args:
        density: fraction of neurons to keep per layer (per group of
            coupled layers), in (0, 1].
        criterion: `"l1"` or `"l2"` norm of a neuron's weights, normalised by
            its fan-in so layers compare under a global threshold (with a
            following BatchNormalization folded in; a group averages its
            layers' norms).
        align: keep a multiple of `align` neurons (e.g. 8 for fast kernels).
        scope: `"layer"` (default) or `"global"` (one threshold).
        min_layer_density: with global scope, the least fraction a layer keeps.
        prune_bias: zero the bias of removed neurons too (default `True`).
        schedule, include, exclude: as in `kc.Prune`.

    Example:

    ```python
    scheme = kc.NeuronPrune(density=0.5)
    pruned = scheme.apply(model)
    pruned.fit(x, y, callbacks=kc.callbacks(scheme))
    small = kc.strip(pruned, shrink=True)
    ```
    """

    scheme_word = "neuron"
    scheme_args = ("D",)
    scheme_help = "keep fraction D of the neurons (output units of Dense, EinsumDense)"
    kinds = ("neuron",)


@keras.saving.register_keras_serializable(package="keras_condensa")
class FilterPrune(_ChannelPrune):
    """Removes whole filters (output channels of convolution layers).

    Arguments as in `kc.NeuronPrune`, for convolution filters. The filters of
    convolutions whose outputs meet at a residual `Add` are one group, and a
    DepthwiseConv2D is pruned with the convolution that feeds it.

    Example:

    ```python
    scheme = kc.FilterPrune(density=0.5)
    pruned = scheme.apply(model)
    pruned.fit(x, y, callbacks=kc.callbacks(scheme))
    small = kc.shrink(pruned, align=8)
    ```
    """

    scheme_word = "filter"
    scheme_args = ("D",)
    scheme_help = "keep fraction D of the filters (output channels of convolutions)"
    kinds = ("filter",)


@keras.saving.register_keras_serializable(package="keras_condensa")
class StructurePrune(_ChannelPrune):
    """Removes neurons and filters under one global threshold (Condensa's `StructurePrune`).

    Arguments as in `kc.NeuronPrune`; `scope` defaults to `"global"`.
    """

    scheme_word = "structure"
    scheme_args = ("D",)
    scheme_help = "keep fraction D of the neurons and filters together (one global threshold)"
    kinds = ("neuron", "filter")
    default_scope = "global"
