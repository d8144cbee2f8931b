"""Structured pruning: whole neurons (Dense units) and filters (conv channels).

After Condensa's `NeuronPrune`, `FilterPrune` and `StructurePrune`. A removed
structure is an output channel: its column of the kernel and its bias entry
are zeroed, so the channel outputs `activation(0)`.
"""

from keras_condensa import masks
from keras_condensa.operators.base import PruningOperator
from keras_condensa.operators.prune import check_min_density, check_scope


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
        if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
            raise ValueError(f"align must be a positive int or None. Received: align={align!r}")
        scope = scope or self.default_scope
        check_scope(scope)
        check_min_density(min_layer_density)
        self.criterion = criterion
        self.align = align
        self.scope = scope
        self.min_layer_density = float(min_layer_density)
        self.prune_bias = bool(prune_bias)

    def reason_unsupported(self, layer, spec):
        reason = super().reason_unsupported(layer, spec)
        if reason is None and spec.kind not in self.kinds:
            wanted = " or ".join(self.kinds)
            reason = f"{type(layer).__name__} has no {wanted} structure to remove"
        return reason

    def paths(self, layer, spec):
        paths = [spec.channel_weight]
        if self.prune_bias and spec.bias:
            paths.append(spec.bias)
        return tuple(paths)

    def compute_masks(self, items, density):
        scores = [
            masks.channel_scores(current[spec.channel_weight], spec.channel_axes, self.criterion)
            for _, spec, _, current in items
        ]
        sizes = [s.size for s in scores]
        if self.scope == "global":
            aligns = [self.align] * len(scores) if self.align else None
            counts = masks.global_keep_counts(scores, density, self.min_layer_density, aligns)
        else:
            counts = [masks.keep_count(density, n, self.align) for n in sizes]
        result = {}
        for (wrapper, spec, paths, current), score, count in zip(items, scores, counts):
            keep = masks.topk_mask(score, count)
            kernel = current[spec.channel_weight]
            result[(id(wrapper), spec.channel_weight)] = masks.expand_channel_mask(
                keep, kernel, spec.channel_axes
            )
            if spec.bias in paths:
                result[(id(wrapper), spec.bias)] = masks.expand_channel_mask(
                    keep, current[spec.bias], (0,)
                )
        return result

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


class NeuronPrune(_ChannelPrune):
    """Removes whole neurons (output units of Dense and EinsumDense layers).

    Args:
        density: fraction of neurons to keep per layer, in (0, 1].
        criterion: `"l1"` or `"l2"` norm of a neuron's weights, normalised by
            its fan-in so layers compare under a global threshold.
        align: keep a multiple of `align` neurons (e.g. 8 for fast kernels).
        scope: `"layer"` (default) or `"global"` (one threshold).
        min_layer_density: with global scope, the least fraction a layer keeps.
        prune_bias: zero the bias of removed neurons too (default `True`).
        schedule, include, exclude: as in `kc.Prune`.
    """

    kinds = ("neuron",)


class FilterPrune(_ChannelPrune):
    """Removes whole filters (output channels of convolution layers).

    Arguments as in `kc.NeuronPrune`, for convolution filters.
    """

    kinds = ("filter",)


class StructurePrune(_ChannelPrune):
    """Removes neurons and filters under one global threshold (Condensa's `StructurePrune`).

    Arguments as in `kc.NeuronPrune`; `scope` defaults to `"global"`.
    """

    kinds = ("neuron", "filter")
    default_scope = "global"
