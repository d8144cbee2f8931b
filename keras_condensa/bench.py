"""Keras inference latency, timed on the device Keras runs on, and that device's name."""

import os
import platform
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


def _cpu_name():
    """`"CPU (<model name>, <n> cores)"`, from /proc/cpuinfo where there is one."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown"
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count()
    return f"CPU ({model}, {cores} cores)"


def _jax_name(tensor):
    device = next(iter(tensor.devices()))
    if device.platform == "cpu":
        return _cpu_name()
    return f"{device.device_kind} ({device.platform})"


def _torch_name(tensor):
    import torch  # noqa: PLC0415 - the torch backend only

    device = tensor.device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    if device.type == "xpu":
        return f"{torch.xpu.get_device_name(device)} (xpu)"
    if device.type == "mps":
        return "Apple GPU (mps)"
    return _cpu_name()


def _tensorflow_name(tensor):
    # The placement string names the GPU by index only ("/job:.../device:GPU:0"): the model's
    # name needs `tf.config`, which the core does not import.
    if ":GPU:" not in tensor.device.upper():
        return _cpu_name()
    return f"GPU {int(tensor.device.rsplit(':', 1)[1])} (tensorflow)"


def device_name():
    """A readable name of the device Keras computes on, for the current backend.

    The device is the one a new tensor lands on (`keras.ops.zeros`), so it
    follows the backend's own placement (JAX's default device, the torch
    backend's `KERAS_TORCH_DEVICE`, TensorFlow's first GPU). A GPU is named
    by its driver on JAX and torch (`"NVIDIA H100 80GB HBM3 (gpu)"`), by its
    index on TensorFlow (`"GPU 0 (tensorflow)"`: its name would need
    `tf.config`); on the CPU, and on the numpy and OpenVINO backends, it is
    `"CPU (<model>, <n> cores)"`, the cores being those this process may use.
    torch is only imported here, when it is the backend.

    Returns:
        A non-empty string.

    Example:

    ```python
    from keras_condensa import bench

    p50 = bench.keras_latency_ms(model, x)["p50_ms"]
    print(f"p50 {p50:.2f} ms on {bench.device_name()}")
    ```
    """
    backend = keras.backend.backend()
    namers = {"jax": _jax_name, "torch": _torch_name, "tensorflow": _tensorflow_name}
    if backend not in namers:
        return _cpu_name()
    return namers[backend](keras.ops.zeros(()))
