"""Constrained search: the cheapest compression that still meets a bound.

`ConstrainedBayesianOracle` is a `keras_tuner.Oracle` that minimises a cost
(bytes, latency, nonzero parameters) subject to a `Constraint` on another
metric (an accuracy floor), driven the standard Keras Tuner way;
`CompressionTuner` runs the compression trials against it (or against any
`keras_tuner.Oracle` given as `oracle=`). `keras_condensa.search.run` is the
search workflow the command line and the demo share (results directory,
best model, LiteRT file, report). `strategies` holds the oracle's strategies
and the `propose` seam a new one plugs into. `GeneticChannelOracle` searches
per-layer keep-ratios layer by layer with a genetic algorithm (Hu et al.
2018); `distill_best` fine-tunes a search's answer with the dense model as
teacher.
`mixed_precision_scheme` makes each layer's bit-width (int4, int8, float) a
hyperparameter.
"""

from keras_condensa.search import strategies
from keras_condensa.search.constraint import Constraint
from keras_condensa.search.final import distill_best
from keras_condensa.search.genetic import GeneticChannelOracle
from keras_condensa.search.mixed_precision import MixedPrecisionScheme, mixed_precision_scheme
from keras_condensa.search.oracle import ConstrainedBayesianOracle
from keras_condensa.search.tuner import CompressionTuner

__all__ = [
    "CompressionTuner",
    "ConstrainedBayesianOracle",
    "Constraint",
    "GeneticChannelOracle",
    "MixedPrecisionScheme",
    "distill_best",
    "mixed_precision_scheme",
    "strategies",
]
