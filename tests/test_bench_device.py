"""`bench.device_name()`: a readable name of the device Keras computes on."""

import os
import subprocess
import sys
from importlib.util import find_spec

import keras
import pytest

from keras_condensa import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensor_on_cpu():
    """Whether the backend puts a new tensor on the CPU, read from the tensor itself."""
    tensor = keras.ops.zeros(())
    if keras.backend.backend() == "jax":
        return next(iter(tensor.devices())).platform == "cpu"
    device = getattr(tensor, "device", "cpu")
    return "cpu" in str(getattr(device, "type", device)).lower()


def test_device_name_is_a_readable_string():
    name = bench.device_name()
    assert isinstance(name, str) and name.strip()
    assert name == bench.device_name()  # stable between calls


@pytest.mark.skipif(not _tensor_on_cpu(), reason="Keras computes on an accelerator here")
def test_device_name_on_cpu_names_the_cpu_and_its_cores():
    name = bench.device_name()
    assert name.lower().startswith("cpu (")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert name.endswith(f", {cores} cores)")


@pytest.mark.skipif(find_spec("jax") is None, reason="needs the JAX backend installed")
def test_device_name_under_jax_does_not_import_tensorflow():
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # importing it would now fail\n"
        "from keras_condensa import bench\n"
        "print(bench.device_name())\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    process = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip().splitlines()[-1].strip()
