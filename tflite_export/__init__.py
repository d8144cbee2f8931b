"""tflite_export: Keras 3 models to LiteRT (TFLite) files, verified and measured.

The only part of keras-condensa that uses TensorFlow (for the TFLite
converter), imported lazily: `import tflite_export` does not import TensorFlow,
and under the JAX or PyTorch backend `export` converts in a TensorFlow-backend
subprocess. Files run with the `ai-edge-litert` interpreter.

Example:

```python
import tflite_export as te

result = te.export(model, "model.tflite", quantize="int8", representative_data=x[:300])
te.verify(result, model, x_val).top1_agreement
te.benchmark(result, num_threads=1).p50_ms
print(te.tensor_table(result))
```
"""

from tflite_export.benchmark import BenchmarkResult, benchmark
from tflite_export.convert import export
from tflite_export.errors import (
    ConversionError,
    ExportWarning,
    InvalidTFLiteFileError,
    UnsupportedOpsError,
)
from tflite_export.inspection import TensorInfo, inspect_tflite, op_counts, tensor_table
from tflite_export.result import ExportResult
from tflite_export.runtime import predict
from tflite_export.verify import VerifyResult, verify

__all__ = [
    "BenchmarkResult",
    "ConversionError",
    "ExportResult",
    "ExportWarning",
    "InvalidTFLiteFileError",
    "TensorInfo",
    "UnsupportedOpsError",
    "VerifyResult",
    "benchmark",
    "export",
    "inspect_tflite",
    "op_counts",
    "predict",
    "tensor_table",
    "verify",
]
