"""Read a LiteRT (TFLite) flatbuffer: tensors, ops, sparse encoding.

Parses the file with the flatbuffers schema bundled in `ai_edge_litert`, so this
module needs no TensorFlow.
"""

import collections
import dataclasses

from tflite_export import runtime
from tflite_export.errors import missing_dependency

_TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
    11: "complex128",
    12: "uint64",
    13: "resource",
    14: "variant",
    15: "uint32",
    16: "uint16",
    17: "int4",
    18: "bfloat16",
    19: "int2",
    20: "uint4",
    21: "float8_e4m3fn",
    22: "float8_e5m2",
}
_CUSTOM = 32  # BuiltinOperator.CUSTOM


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a LiteRT file.

    Attributes:
        subgraph: index of the subgraph holding the tensor (0 is the main one).
        index: tensor index inside its subgraph.
        name: tensor name.
        dtype: element type, as a NumPy-style name (`"float32"`, `"int8"`, ...).
        shape: static shape (a batch dimension of 1 for exported models).
        sparse: whether the tensor is stored in a sparse encoding.
        bytes: bytes of the tensor's constant buffer in the file (0 for
            activations); for a sparse tensor, only its stored values.
    """

    subgraph: int
    index: int
    name: str
    dtype: str
    shape: tuple
    sparse: bool
    bytes: int


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as error:
        raise missing_dependency("ai-edge-litert", "the LiteRT file schema", error) from error

    return schema_py_generated


def _root(content):
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(content, 0)
        model.SubgraphsLength()
    except Exception as error:  # noqa: BLE001 - a damaged flatbuffer raises anything
        raise runtime.invalid_file(f"cannot parse the flatbuffer ({error})") from None
    return model


def _buffer_bytes(model, tensor):
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return 0
    buffer = model.Buffers(index)
    if buffer.DataLength():
        return buffer.DataLength()
    # Files over 2 GB keep buffers after the flatbuffer, addressed by offset/size.
    return int(buffer.Size()) if buffer.Offset() > 1 else 0


def _dtype(code):
    return _TENSOR_TYPES.get(code, f"type{code}")


def _op_names(model):
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    result = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == _CUSTOM:
            custom = code.CustomCode()
            result.append(custom.decode() if custom else "CUSTOM")
        else:
            result.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return result


def inspect_tflite(tflite):
    """Lists the tensors of a LiteRT file.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.

    Returns:
        A list of `TensorInfo`, subgraph by subgraph, in tensor order.

    Raises:
        FileNotFoundError: the path does not exist.
        InvalidTFLiteFileError: the content is not a LiteRT flatbuffer.

    Example:

    ```python
    infos = te.inspect_tflite("model.tflite")
    print(te.tensor_table(infos))
    sparse = [t.name for t in infos if t.sparse]
    ```
    """
    content = runtime.read_model(tflite)
    model = _root(content)
    infos = []
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(i)
            shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            infos.append(
                TensorInfo(
                    subgraph=g,
                    index=i,
                    name=(tensor.Name() or b"").decode(errors="replace"),
                    dtype=_dtype(tensor.Type()),
                    shape=shape,
                    sparse=tensor.Sparsity() is not None,
                    bytes=_buffer_bytes(model, tensor),
                )
            )
    return infos


def op_names(tflite):
    """Sorted names of the distinct ops a LiteRT file uses.

    Builtin ops by their schema name (`"FULLY_CONNECTED"`), custom and Flex ops
    by their custom code (`"FlexQr"`).

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.

    Returns:
        A sorted list of op names used by any subgraph.
    """
    model = _root(runtime.read_model(tflite))
    codes = _op_names(model)
    used = set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            used.add(codes[subgraph.Operators(i).OpcodeIndex()])
    return sorted(used)


def op_counts(tflite):
    """How many times each op occurs in a LiteRT file, over all subgraphs.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.

    Returns:
        A `collections.Counter` `{op name: count}`.

    Example:

    ```python
    te.op_counts("model.tflite")["QUANTIZE"]
    ```
    """
    model = _root(runtime.read_model(tflite))
    codes = _op_names(model)
    counts = collections.Counter()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            counts[codes[subgraph.Operators(i).OpcodeIndex()]] += 1
    return counts


def io_dtypes(tflite):
    """Element types of the main subgraph's inputs and outputs.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.

    Returns:
        `(input_dtypes, output_dtypes)`, two lists of dtype names.
    """
    model = _root(runtime.read_model(tflite))
    subgraph = model.Subgraphs(0)
    inputs = [_dtype(subgraph.Tensors(int(i)).Type()) for i in subgraph.InputsAsNumpy()]
    outputs = [_dtype(subgraph.Tensors(int(i)).Type()) for i in subgraph.OutputsAsNumpy()]
    return inputs, outputs


def tensor_table(tflite_or_infos, constants_only=True):
    """Formats tensors as a plain-text table.

    Args:
        tflite_or_infos: a list of `TensorInfo`, or anything `inspect_tflite` takes.
        constants_only: list only tensors with a constant buffer (weights),
            which is what makes the file's size.

    Returns:
        The table as one string, ending with a totals line.

    Example:

    ```python
    print(te.tensor_table("model.tflite"))
    ```
    """
    infos = tflite_or_infos
    if not (isinstance(infos, list) and all(isinstance(t, TensorInfo) for t in infos)):
        infos = inspect_tflite(tflite_or_infos)
    rows = [t for t in infos if t.bytes or not constants_only]
    header = ("name", "dtype", "shape", "sparse", "bytes")
    body = [
        (
            t.name,
            t.dtype,
            "x".join(str(d) for d in t.shape) or "scalar",
            "yes" if t.sparse else "",
            str(t.bytes),
        )
        for t in rows
    ]
    widths = [max(len(r[c]) for r in [header, *body]) for c in range(len(header))]

    def line(row):
        cells = [
            row[c].ljust(widths[c]) if c < 4 else row[c].rjust(widths[c]) for c in range(len(row))
        ]
        return "  ".join(cells).rstrip()

    total = sum(t.bytes for t in rows)
    sparse = sum(t.sparse for t in rows)
    lines = [line(header), line(tuple("-" * w for w in widths)), *map(line, body)]
    lines.append(f"{len(rows)} tensors, {sparse} sparse, {total} buffer bytes")
    return "\n".join(lines)


_WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL")


def float_compute_ops(tflite):
    """Weighted ops (matmul, convolutions) that take float32 activations.

    In an int8 file, these are the parts left in float.

    Args:
        tflite: path to a `.tflite` file, its bytes, or an `ExportResult`.

    Returns:
        A sorted list of op names.
    """
    model = _root(runtime.read_model(tflite))
    codes = _op_names(model)
    found = set()
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            name = codes[op.OpcodeIndex()]
            if name in _WEIGHTED_OPS and op.InputsLength():
                if subgraph.Tensors(int(op.Inputs(0))).Type() == 0:  # FLOAT32
                    found.add(name)
    return sorted(found)
