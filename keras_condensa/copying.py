"""Copying a user's layers and models: the one path every rewrite goes through.

`apply`, `strip`, `shrink` and the BatchNorm fold never modify the user's
model: they rebuild it with `keras.models.clone_model`, copying each layer from
its config and its weights. The details that make this work on models nobody
here wrote live in this module:

- a layer's `get_config` may carry derived keys its constructor rejects
  (KerasHub's `ViTPatchingAndEmbedding`); they are dropped and the copy retried;
- a custom layer that builds its sublayers on its first call (no `build`) is
  built by a symbolic call;
- auto-named sublayers get the names they have in the original;
- `clone_model` would recompile the copy from the compile config, which cannot
  rebuild a plain Python loss: the copy is compiled from the live objects.
"""

import inspect
import warnings

import keras
import numpy as np

from keras_condensa import compiling, reach


def _constructor_config(layer, config):
    """`config` without the keys that `layer`'s constructor does not take, or `None`."""
    parameters = inspect.signature(type(layer).__init__).parameters
    known = {n for n, p in parameters.items() if p.kind is not p.VAR_KEYWORD}
    known |= {"name", "trainable", "dtype"}
    kept = {k: v for k, v in config.items() if k in known}
    return kept if len(kept) < len(config) else None


def copy_layer(layer, config=None):
    """A new, unbuilt layer with `layer`'s config (or `config`); weights are copied later.

    Args:
        layer: the layer to copy.
        config: the config to build the copy from (default: `layer.get_config()`).

    Returns:
        The new layer.

    Raises:
        TypeError: naming the layer, when `from_config` cannot rebuild it.
    """
    config = layer.get_config() if config is None else config
    try:
        return layer.__class__.from_config(config)
    except Exception as error:  # noqa: BLE001 - re-raised with the layer named
        trimmed = _constructor_config(layer, config)
        if trimmed is not None:
            try:
                return layer.__class__.from_config(trimmed)
            except Exception:  # noqa: BLE001, S110 - the first error is the one to report
                pass
        raise TypeError(
            f"Cannot copy layer '{layer.name}' ({type(layer).__name__}): from_config(get_config()) "
            f"failed with: {error}. Give the layer a complete get_config()."
        ) from error


def build_from_config(layer, build_config):
    """`layer.build_from_config`, then a symbolic call if that left sublayers unbuilt.

    A custom layer without its own `build()` builds its sublayers on its first
    call (the pattern of the Keras guide); Keras's default `build` only marks
    the layer built.
    """
    if not layer.built:
        layer.build_from_config(build_config)
    unbuilt = any(not sub.built for sub in layer._flatten_layers(include_self=False))
    if unbuilt and "input_shape" in build_config:
        layer(keras.tree.map_shape_structure(keras.KerasTensor, build_config["input_shape"]))


def prebuild(source, target):
    """Builds `target`, a copy of `source`, as `source` was built; copies its sublayers' names."""
    build_config = source.get_build_config()
    if source.built and build_config and not target.built:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer")
            build_from_config(target, build_config)
    reach.copy_names(source, target)


def clone(model, clone_function, call_function=None):
    """`keras.models.clone_model` (recursive) that compiles the copy from `model`'s live set-up.

    Args:
        model: a Sequential or functional model.
        clone_function: maps each layer (and stateless operation) to its copy.
        call_function: optional, as in `keras.models.clone_model`.

    Returns:
        The copy, compiled like `model` when `model` is compiled.
    """
    compiled = getattr(model, "compiled", False)
    model.compiled = False
    try:
        copy = keras.models.clone_model(
            model, clone_function=clone_function, call_function=call_function, recursive=True
        )
    finally:
        model.compiled = compiled
    return copy


def compile_copy(copy, model):
    """Compiles `copy` like `model` (when `model` is compiled), once its weights are in."""
    if getattr(model, "compiled", False):
        compiling.compile_like(copy, model)
    return copy


def clone_with(model, clone_layer):
    """Clones `model`, mapping each leaf layer through `clone_layer`.

    `clone_layer(layer)` returns `(new_layer, copy_weights)`, where
    `copy_weights()` is called once the new model is built.
    """
    copies = []

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless operation (`x + y` in a functional model)
        new_layer, copy_weights = clone_layer(layer)
        copies.append(copy_weights)
        return new_layer

    copied = clone(model, clone_function)
    for copy_weights in copies:
        copy_weights()
    return compile_copy(copied, model)


def plain_copy(layer):
    """A copy of `layer` and the function that copies its weights, for `clone_with`."""
    new = copy_layer(layer)
    prebuild(layer, new)
    return new, lambda: new.set_weights(layer.get_weights())


def named_weights(layer):
    """`{weight name: NumPy copy}` of a layer's weights (what surgery reads and rewrites)."""
    return {w.name: np.array(keras.ops.convert_to_numpy(w)) for w in layer.weights}
