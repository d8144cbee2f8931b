"""`kc.strip`: the compressed model made plain for export (and optionally shrunk)."""

from keras_condensa import masking, surgery
from keras_condensa.model_checks import check_model
from keras_condensa.shrink import shrink as shrink_model


def strip(model, keep_quantization=True, shrink=False):
    """Returns the model ready for export: masked weights baked in as zeros.

    Wrappers are removed (each weight gets its operators' `finalize`): the
    result uses Keras layer classes, so it
    loads with `keras.saving.load_model` without keras_condensa imported.
    float16-quantized weights are baked in (rounded to float16 values).
    Layers trained with `Quantize("int8")` or `"int4"` keep a wrapper holding
    only their quantizers: the fake-quant ops and the learned activation
    ranges stay in the graph, which is how they reach the TFLite converter
    (`tflite_export.export(final, path, quantize="int8")` needs no
    representative data for them). `keep_quantization=False` bakes the
    fake-quantized weights in and drops the activation ranges instead, for a
    plain Keras model. `shrink=True` then removes the channels that
    structured pruning zeroed (`kc.shrink`), so the model is smaller and
    faster instead of full of zeros. The input model is not modified.

    Args:
        model: a model returned by `scheme.apply` (or any Sequential or
            functional model, which is copied as is).
        keep_quantization: keep integer QAT quantizers (see above).
        shrink: remove pruned channels, as `kc.shrink(model)` does (use
            `kc.shrink` itself for its `align` and `on_unknown` options).
            Shrinking rebuilds plain Keras layers, so it needs
            `keep_quantization=False` when the model has int8/int4 QAT
            layers.

    Returns:
        A new `keras.Model`.

    Raises:
        ValueError: with `shrink=True` on a model with int8/int4 QAT layers
            and `keep_quantization=True`.

    Example:

    ```python
    final = kc.strip(pruned)
    final.save("model.keras")
    small = kc.strip(kc.FilterPrune(0.5).apply(model), shrink=True)
    ```
    """
    check_model(model)
    masking.warn_never_pruned(model)
    if shrink:
        qat = [
            w.layer.name
            for w in masking.iter_wrappers(model)
            if any(op.kept_by_strip for op in w.operators)
        ]
        if qat and keep_quantization:
            raise ValueError(
                f"strip(shrink=True) rebuilds plain Keras layers, which would drop the int8/int4 "
                f"quantizers of {qat}. Pass keep_quantization=False to bake the fake-quantized "
                "weights in, or strip without shrink=True."
            )
        return shrink_model(model)
    return surgery.unwrap(model, keep_quantization=keep_quantization)
