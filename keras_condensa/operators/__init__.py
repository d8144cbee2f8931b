"""Compression operators (after Condensa) on operator protocol v2 (`base.Operator`)."""

from keras_condensa.operators.base import Operator
from keras_condensa.operators.block_diagonal import BlockDiagonalPrune
from keras_condensa.operators.cluster import Cluster
from keras_condensa.operators.compose import Compose
from keras_condensa.operators.entropy_coded import EntropyCoded
from keras_condensa.operators.gates import ChannelGates
from keras_condensa.operators.hspg_prune import HSPGPrune
from keras_condensa.operators.mask import MaskOperator, PruningOperator
from keras_condensa.operators.multi_hash import MultiHash
from keras_condensa.operators.patterns import BlockPrune, NMPrune
from keras_condensa.operators.prune import Prune
from keras_condensa.operators.quantize import Quantize
from keras_condensa.operators.soft_threshold import SoftThresholdPrune
from keras_condensa.operators.structured import FilterPrune, NeuronPrune, StructurePrune
from keras_condensa.operators.unify import Unify
from keras_condensa.updates import Item, UpdateContext

__all__ = [
    "BlockDiagonalPrune",
    "BlockPrune",
    "ChannelGates",
    "Cluster",
    "Compose",
    "EntropyCoded",
    "FilterPrune",
    "HSPGPrune",
    "Item",
    "MaskOperator",
    "MultiHash",
    "NMPrune",
    "NeuronPrune",
    "Operator",
    "Prune",
    "PruningOperator",
    "Quantize",
    "SoftThresholdPrune",
    "StructurePrune",
    "Unify",
    "UpdateContext",
]
