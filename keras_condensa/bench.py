"""Keras inference latency, timed on the device Keras runs on."""

import time

import keras
import numpy as np


def keras_latency_ms(model, x, runs=50, warmup=5):
    """Times `model(x[:1])` calls (batch 1), waiting for each result.

    Args:
        model: a Keras model.
        x: inputs; the first sample is used.
        runs: timed calls.
        warmup: untimed calls first (tracing, caches).

    Returns:
        A dict with `p50_ms`, `p90_ms` and `p99_ms`.

    Example:

    ```python
    kc.bench.keras_latency_ms(model, x_val)["p50_ms"]
    ```
    """
    sample = x[:1]
    for _ in range(warmup):
        keras.ops.convert_to_numpy(model(sample, training=False))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(model(sample, training=False))
        times.append((time.perf_counter() - start) * 1e3)
    return {f"p{q}_ms": float(np.percentile(times, q)) for q in (50, 90, 99)}
