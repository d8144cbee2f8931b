"""`benchmark`: LiteRT latency and size of a file, measured on this machine."""

import dataclasses
import time

import numpy as np

from tflite_export import runtime
from tflite_export.convert import gzip_size


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Latency of one inference (batch 1) and the file's size.

    Attributes:
        p50_ms: median latency in milliseconds.
        p90_ms: 90th percentile.
        p99_ms: 99th percentile.
        mean_ms: mean latency.
        bytes: file size.
        gzip_bytes: file size after gzip (level 9).
        kernels: `"xnnpack"` (LiteRT's default: XNNPACK delegate) or `"builtin"`.
        num_threads: CPU threads given to the interpreter.
        runs: number of timed inferences.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    bytes: int
    gzip_bytes: int
    kernels: str
    num_threads: int
    runs: int


def benchmark(tflite, num_threads=1, runs=200, warmup=20, kernels="default"):
    """Times `invoke()` of a LiteRT file with the `ai_edge_litert` interpreter.

    Inputs are fixed random normal values (zeros for integer ids), set once;
    each run times only `invoke()` with `time.perf_counter_ns`.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.
        num_threads: CPU threads for the interpreter (and XNNPACK).
        runs: timed inferences.
        warmup: untimed inferences before them.
        kernels: `"default"` (XNNPACK delegate, as LiteRT applies it by default)
            or `"builtin"` (built-in kernels only).

    Returns:
        A `BenchmarkResult`.

    Raises:
        FileNotFoundError: the file does not exist.
        InvalidTFLiteFileError: it is not a LiteRT file.
        ValueError: invalid `num_threads`, `runs`, `warmup` or `kernels`.
        RuntimeError: the runtime cannot prepare the file with these kernels.

    Example:

    ```python
    timing = te.benchmark("model.tflite", num_threads=1)
    print(f"{timing.p50_ms:.3f} ms, {timing.gzip_bytes} bytes gzipped")
    ```
    """
    runtime.check_kernels(kernels)
    for name, value, least in (
        ("num_threads", num_threads, 1),
        ("runs", runs, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}. Received: {name}={value!r}")
    content = runtime.read_model(tflite)
    runner = runtime.Runner(content, kernels, num_threads=num_threads)
    runner.set_inputs(runner.example_inputs())
    invoke = runner.interpreter.invoke
    for _ in range(warmup):
        invoke()
    times = np.empty(runs, dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(runs):
        start = clock()
        invoke()
        times[i] = clock() - start
    times /= 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return BenchmarkResult(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(times.mean()),
        bytes=len(content),
        gzip_bytes=gzip_size(content),
        kernels="xnnpack" if kernels == "default" else "builtin",
        num_threads=num_threads,
        runs=runs,
    )
