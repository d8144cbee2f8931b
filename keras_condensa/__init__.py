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

# ruff: noqa: E402
# The `keras-condensa` program keeps what TensorFlow prints while it loads (below, through
# Keras) in its log instead of the terminal; in any other program this does nothing.
from keras_condensa.library_log import start_for_program as _start_for_program

_start_for_program()

import importlib as _importlib

from keras_condensa import bench, codec, data_free, optimizers
from keras_condensa.block_dense import BlockDense
from keras_condensa.callbacks import UpdateMasks, callbacks, scheme_of
from keras_condensa.channel_cost import latency_table
from keras_condensa.dependency import ChannelRule, register_channel_rule
from keras_condensa.distill import Distiller, distill
from keras_condensa.flops import flops
from keras_condensa.lc import LC
from keras_condensa.operators import (
    BlockDiagonalPrune,
    BlockPrune,
    ChannelGates,
    Cluster,
    Compose,
    EntropyCoded,
    FilterPrune,
    HSPGPrune,
    MaskOperator,
    MultiHash,
    NeuronPrune,
    NMPrune,
    Operator,
    Prune,
    PruningOperator,
    Quantize,
    SoftThresholdPrune,
    StructurePrune,
    Unify,
)
from keras_condensa.prunable import PrunableLayer, PruneSpec, register_prunable
from keras_condensa.recalibrate import recalibrate_batchnorm
from keras_condensa.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from keras_condensa.sensitivity import sensitivity
from keras_condensa.shrink import shrink
from keras_condensa.stripping import strip
from keras_condensa.summary import Summary, summary
from keras_condensa.version import __version__
from keras_condensa.wrappers import CompressionWrapper

__all__ = [
    "BlockDense",
    "BlockDiagonalPrune",
    "BlockPrune",
    "ChannelGates",
    "Cluster",
    "ChannelRule",
    "Compose",
    "ConstantSparsity",
    "FilterPrune",
    "HSPGPrune",
    "NMPrune",
    "NeuronPrune",
    "Operator",
    "PolynomialDecay",
    "PrunableLayer",
    "Prune",
    "PruneSpec",
    "CompressionWrapper",
    "Distiller",
    "EntropyCoded",
    "LC",
    "MaskOperator",
    "MultiHash",
    "PruningOperator",
    "Quantize",
    "PruningSchedule",
    "SoftThresholdPrune",
    "StructurePrune",
    "Unify",
    "Summary",
    "UpdateMasks",
    "__version__",
    "bench",
    "callbacks",
    "codec",
    "data_free",
    "distill",
    "flops",
    "latency_table",
    "optimizers",
    "recalibrate_batchnorm",
    "register_channel_rule",
    "register_prunable",
    "scheme_of",
    "shrink",
    "search",
    "sensitivity",
    "strip",
    "summary",
]

# `search` needs Keras Tuner and scikit-learn (the `[search]` extra), so it is imported on
# first use (PEP 562): `import keras_condensa` stays light, and `kc.search` works as before.
_LAZY_SUBMODULES = {"search": ("keras_tuner", "sklearn", "scipy", "threadpoolctl")}
_PIP_NAMES = {"keras_tuner": "keras-tuner", "sklearn": "scikit-learn"}


def __getattr__(name):
    if name not in _LAZY_SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        # import_module sets the submodule as an attribute of the package: this runs once.
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in _LAZY_SUBMODULES[name]:
            raise
        raise ImportError(
            f"keras_condensa.{name} needs {_PIP_NAMES.get(missing, missing)}, which is not "
            f"installed. Install the {name} extra: pip install 'keras-condensa[{name}]'"
        ) from error


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
