"""`ExportResult`: what `export` wrote, in-process or through the TensorFlow-backend worker."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export` wrote.

    Attributes:
        path: absolute path of the `.tflite` file.
        bytes: size of the file.
        gzip_bytes: size of the file compressed with gzip (level 9), the size
            a download or an over-the-air update pays.
        ops: sorted names of the ops in the file.
        input_dtypes: element types of the inputs, in model input order.
        output_dtypes: element types of the outputs.
        sparse_tensors: number of tensors stored in the sparse encoding.
        fallback: what `export` changed from the request and why, or `None`.
        kernels: `"default"` if LiteRT's default interpreter (with XNNPACK)
            runs the file, `"builtin"` if it needs the built-in kernels only
            (pass it on as `verify(..., kernels=result.kernels)`).
    """

    path: str
    bytes: int
    gzip_bytes: int
    ops: list
    input_dtypes: list
    output_dtypes: list
    sparse_tensors: int
    fallback: str | None
    kernels: str
