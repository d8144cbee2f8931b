"""Optimizers that sparsify while they train: `HSPG` (half-space projected gradient)."""

from keras_condensa.optimizers.groups import ChannelGroup, channel_groups, zero_channels
from keras_condensa.optimizers.hspg import HSPG, AdamHSPG

__all__ = ["HSPG", "AdamHSPG", "ChannelGroup", "channel_groups", "zero_channels"]
