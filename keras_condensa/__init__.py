"""keras-condensa: programmable model compression for Keras 3.

Example:

```python
import keras_condensa as kc

scheme = kc.Prune(density=0.1, schedule=kc.PolynomialDecay(end_step=0.8, frequency=10))
pruned = scheme.apply(model)
pruned.compile(...)
pruned.fit(x, y, epochs=5, callbacks=kc.callbacks(scheme))
final = kc.strip(pruned)
kc.summary(final)
```
"""

from keras_condensa import search
from keras_condensa.callbacks import UpdateMasks, callbacks
from keras_condensa.dependency import ChannelRule, register_channel_rule
from keras_condensa.distill import Distiller, distill
from keras_condensa.lc import LC
from keras_condensa.operators import (
    BlockPrune,
    Compose,
    FilterPrune,
    NeuronPrune,
    NMPrune,
    Operator,
    Prune,
    PruningOperator,
    Quantize,
    StructurePrune,
)
from keras_condensa.prunable import PrunableLayer, PruneSpec, register_prunable
from keras_condensa.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_condensa.shrink import shrink
from keras_condensa.summary import Summary, summary
from keras_condensa.surgery import strip
from keras_condensa.version import __version__
from keras_condensa.wrappers import CompressionWrapper

__all__ = [
    "BlockPrune",
    "ChannelRule",
    "Compose",
    "ConstantSparsity",
    "FilterPrune",
    "NMPrune",
    "NeuronPrune",
    "Operator",
    "PolynomialDecay",
    "PrunableLayer",
    "Prune",
    "PruneSpec",
    "CompressionWrapper",
    "Distiller",
    "LC",
    "PruningOperator",
    "Quantize",
    "PruningSchedule",
    "StructurePrune",
    "Summary",
    "UpdateMasks",
    "__version__",
    "callbacks",
    "distill",
    "register_channel_rule",
    "register_prunable",
    "shrink",
    "search",
    "strip",
    "summary",
]
