"""Compression operators (after Condensa): pruning patterns and `Compose`."""

from keras_condensa.operators.base import Operator, PruningOperator
from keras_condensa.operators.compose import Compose
from keras_condensa.operators.patterns import BlockPrune, NMPrune
from keras_condensa.operators.prune import Prune
from keras_condensa.operators.quantize import Quantize
from keras_condensa.operators.structured import FilterPrune, NeuronPrune, StructurePrune

__all__ = [
    "BlockPrune",
    "Compose",
    "FilterPrune",
    "NMPrune",
    "NeuronPrune",
    "Operator",
    "Prune",
    "PruningOperator",
    "Quantize",
    "StructurePrune",
]
