"""The byte layout of a `.kcz` file (`kc.codec`), format version 1.

```
b"KCZ\\x89"            magic (a high byte, as in PNG's, catches 7-bit transfers)
varint version         FORMAT_VERSION
varint total           the file's length in bytes, CRC included
varint H << 1 | m      the header's length, and m: 0 raw deflate with DICTIONARY, 1 raw LZMA2
H bytes                the header, compressed
varint C << 1 | r      the index stream's length, and r: how the raw stream is compressed
C bytes                the index stream: range-coder words, big-endian, trailing zeros dropped
...                    the raw stream (up to the CRC), compressed (0 deflate, 1 LZMA2)
4 bytes                CRC32 (`zlib.crc32`, little-endian) of every byte before it
```

The header, decompressed: `varint J`, `J` bytes of the model's JSON config
(UTF-8), `varint N` variables, then for each: its dtype (one byte, an index
into `DTYPES`, or 255 then `varint` length and the ASCII name), `varint`
rank, `varint` dimensions, and `varint M`, how it is coded:

- `M = 0`, raw: its values are in the raw stream (byte planes, `to_planes`).
- `M = 1`, zero map: `varint` the number of nonzero elements (bit patterns
  other than all zeros); the map is in the index stream, the nonzero values
  in the raw stream.
- `M = K + 1`, a palette of `K` distinct values: their sortable keys
  (`to_keys`), the first as is, the others as `varint` differences, then
  the counts of the first `K - 1` as varints (the last is implied). When
  `K >= 2` the index of each element is in the index stream.

The index stream holds the maps and palette indices, variable by variable,
each coded with `constriction`'s range coder under the categorical model
of its exact counts.

`varint`: unsigned LEB128 (7 bits a byte, low bits first).
"""

import lzma
import zlib

import numpy as np

MAGIC = b"KCZ\x89"
FORMAT_VERSION = 1

# The dtypes of the header's one-byte codes (others: OTHER_DTYPE and the name).
_NAMES = "float32 float16 bfloat16 float64 int8 uint8 int16 uint16 int32 uint32 int64 uint64 bool"
DTYPES = tuple(_NAMES.split())
OTHER_DTYPE = 255
_DEFLATE, _LZMA = 0, 1
_SLOW_LIMIT = 1 << 20
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 22}]

# Fragments of Keras 3 model configs, the deflate dictionary of headers
# (`zdict`): the JSON of a small model then shares most of its text with it.
# Part of format 1: never edit it (a new dictionary is a new format version).
DICTIONARY = (
    '{"module":"keras_condensa.operators.prune","class_name":"Prune","config":{"density":0.1,'
    '"schedule":null,"include":null,"exclude":null,"scope":"global","min_layer_density":0.0,'
    '"prune_bias":false},"registered_name":"keras_condensa>Prune"},{"module":"keras_condensa.'
    'operators.quantize","class_name":"Quantize","config":{"dtype":"int8","mode":"qat","activati'
    'ons":true,"range_decay":0.99,"include":null,"exclude":null},"registered_name":"keras_conden'
    'sa>Quantize"}],"weights":{"kernel":[1]},"layer_operators":[[1,{"places":["input","output"]'
    '}]]},"registered_name":"keras_condensa>CompressionWrapper","build_config":{"input_shape":[n'
    'ull,64]}},{"module":"keras_condensa.wrappers","class_name":"CompressionWrapper","config":{"'
    'name":"dense_compressed","trainable":true,"dtype":{"module":"keras","class_name":"DTypePolic'
    'y","config":{"name":"float32"},"registered_name":null},"layer":{"module":"keras","class_name'
    '":"Sequential","config":{"name":"sequential","trainable":true,"dtype":{"module":"keras","cla'
    'ss_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"layers":[{"modul'
    'e":"keras.layers","class_name":"InputLayer","config":{"batch_shape":[null,64],"dtype":"floa'
    't32","sparse":false,"ragged":false,"name":"input_layer","optional":false},"registered_name"'
    ':null},{"module":"keras.layers","class_name":"Embedding","config":{"name":"embedding","train'
    'able":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float32"}'
    ',"registered_name":null},"input_dim":100,"output_dim":8,"embeddings_initializer":{"module":'
    '"keras.initializers","class_name":"RandomUniform","config":{"seed":null,"minval":-0.05,"max'
    'val":0.05},"registered_name":null},"embeddings_regularizer":null,"activity_regularizer":null'
    ',"embeddings_constraint":null,"mask_zero":false},"registered_name":null,"build_config":{"in'
    'put_shape":[null,12]}},{"module":"keras.layers","class_name":"LSTM","config":{"name":"lstm",'
    '"trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"flo'
    'at32"},"registered_name":null},"return_sequences":false,"return_state":false,"go_backwards"'
    ':false,"stateful":false,"unroll":false,"zero_output_for_mask":false,"units":16,"activation":'
    '"tanh","recurrent_activation":"sigmoid","use_bias":true,"kernel_initializer":{"module":"kera'
    's.initializers","class_name":"GlorotUniform","config":{"seed":null},"registered_name":null},'
    '"recurrent_initializer":{"module":"keras.initializers","class_name":"Orthogonal","config":{'
    '"seed":null,"gain":1.0},"registered_name":null},"bias_initializer":{"module":"keras.initiali'
    'zers","class_name":"Zeros","config":{},"registered_name":null},"unit_forget_bias":true,"kern'
    'el_regularizer":null,"recurrent_regularizer":null,"bias_regularizer":null,"activity_regulari'
    'zer":null,"kernel_constraint":null,"recurrent_constraint":null,"bias_constraint":null,"dropo'
    'ut":0.0,"recurrent_dropout":0.0,"seed":null},"registered_name":null,"build_config":{"input_s'
    'hape":[null,12,8]}},{"module":"keras.layers","class_name":"BatchNormalization","config":{"na'
    'me":"batch_normalization","trainable":true,"dtype":{"module":"keras","class_name":"DTypePoli'
    'cy","config":{"name":"float32"},"registered_name":null},"axis":-1,"momentum":0.99,"epsilon":'
    '0.001,"center":true,"scale":true,"beta_initializer":{"module":"keras.initializers","class_nam'
    'e":"Zeros","config":{},"registered_name":null},"gamma_initializer":{"module":"keras.initiali'
    'zers","class_name":"Ones","config":{},"registered_name":null},"moving_mean_initializer":{"mo'
    'dule":"keras.initializers","class_name":"Zeros","config":{},"registered_name":null},"moving_'
    'variance_initializer":{"module":"keras.initializers","class_name":"Ones","config":{},"regist'
    'ered_name":null},"beta_regularizer":null,"gamma_regularizer":null,"beta_constraint":null,"ga'
    'mma_constraint":null,"synchronized":false,"renorm":false,"renorm_clipping":null,"renorm_mome'
    'ntum":0.99},"registered_name":null,"build_config":{"input_shape":[null,8,8,8]},"name":"batch'
    '_normalization","inbound_nodes":[{"args":[{"class_name":"__keras_tensor__","config":{"shape"'
    ':[null,8,8,8],"dtype":"float32","keras_history":["conv2d",0,0]}}],"kwargs":{"mask":null}}]},'
    '{"module":"keras.layers","class_name":"DepthwiseConv2D","config":{"name":"depthwise_conv2d",'
    '"trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"floa'
    't32"},"registered_name":null},"depth_multiplier":1,"kernel_size":[3,3],"strides":[1,1],"padd'
    'ing":"same","data_format":"channels_last","dilation_rate":[1,1],"activation":"linear","use_b'
    'ias":true,"depthwise_initializer":{"module":"keras.initializers","class_name":"GlorotUniform'
    '","config":{"seed":null,"input_axes":null,"output_axes":null},"registered_name":null},"bias_'
    'initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},"registered_nam'
    'e":null},"depthwise_regularizer":null,"bias_regularizer":null,"activity_regularizer":null,"d'
    'epthwise_constraint":null,"bias_constraint":null},"registered_name":null,"build_config":{"inp'
    'ut_shape":[null,8,8,8]},"name":"depthwise_conv2d","inbound_nodes":[{"args":[{"class_name":"_'
    '_keras_tensor__","config":{"shape":[null,8,8,8],"dtype":"float32","keras_history":["re_lu",0'
    ',0]}}],"kwargs":{}}]},{"module":"keras.layers","class_name":"ReLU","config":{"name":"re_lu",'
    '"trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"floa'
    't32"},"registered_name":null},"max_value":null,"negative_slope":0.0,"threshold":0.0},"regist'
    'ered_name":null,"name":"re_lu","inbound_nodes":[]},{"module":"keras.layers","class_name":"Ac'
    'tivation","config":{"name":"activation","trainable":true,"dtype":{"module":"keras","class_na'
    'me":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"activation":"relu"},"r'
    'egistered_name":null,"name":"activation","inbound_nodes":[]},{"module":"keras.layers","class'
    '_name":"Add","config":{"name":"add","trainable":true,"dtype":{"module":"keras","class_name":"'
    'DTypePolicy","config":{"name":"float32"},"registered_name":null}},"registered_name":null,"bui'
    'ld_config":{"input_shape":[[null,8,8,8],[null,8,8,8]]},"name":"add","inbound_nodes":[{"args"'
    ':[[{"class_name":"__keras_tensor__","config":{"shape":[null,8,8,8],"dtype":"float32","keras_'
    'history":["activation",0,0]}}]],"kwargs":{}}]},{"module":"keras.layers","class_name":"MaxPoo'
    'ling2D","config":{"name":"max_pooling2d","trainable":true,"dtype":{"module":"keras","class_n'
    'ame":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"pool_size":[2,2],"pa'
    'dding":"valid","strides":[2,2],"data_format":"channels_last"},"registered_name":null,"name":'
    '"max_pooling2d","inbound_nodes":[]},{"module":"keras.layers","class_name":"GlobalAveragePool'
    'ing2D","config":{"name":"global_average_pooling2d","trainable":true,"dtype":{"module":"keras"'
    ',"class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null},"data_format'
    '":"channels_last","keepdims":false},"registered_name":null,"name":"global_average_pooling2d",'
    '"inbound_nodes":[]},{"module":"keras.layers","class_name":"Dropout","config":{"name":"dropou'
    't","trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"f'
    'loat32"},"registered_name":null},"rate":0.2,"seed":null,"noise_shape":null},"registered_name'
    '":null,"name":"dropout","inbound_nodes":[{"args":[],"kwargs":{"training":false}}]},{"module":'
    '"keras.layers","class_name":"Flatten","config":{"name":"flatten","trainable":true,"dtype":{"'
    'module":"keras","class_name":"DTypePolicy","config":{"name":"float32"},"registered_name":null'
    '},"data_format":"channels_last"},"registered_name":null,"build_config":{"input_shape":[null,4'
    ',4,32]},"name":"flatten","inbound_nodes":[]},{"module":"keras.src.models.functional","class_n'
    'ame":"Functional","config":{"name":"functional","trainable":true,"layers":[{"module":"keras.l'
    'ayers","class_name":"InputLayer","config":{"batch_shape":[null,8,8,1],"dtype":"float32","spa'
    'rse":false,"ragged":false,"name":"input_layer","optional":false},"registered_name":null,"name'
    '":"input_layer","inbound_nodes":[]},{"module":"keras.layers","class_name":"Conv2D","config":{'
    '"name":"conv2d","trainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config'
    '":{"name":"float32"},"registered_name":null},"filters":16,"kernel_size":[3,3],"strides":[1,1]'
    ',"padding":"valid","data_format":"channels_last","dilation_rate":[1,1],"groups":1,"activation'
    '":"relu","use_bias":true,"kernel_initializer":{"module":"keras.initializers","class_name":"Gl'
    'orotUniform","config":{"seed":null,"input_axes":null,"output_axes":null},"registered_name":nu'
    'll},"bias_initializer":{"module":"keras.initializers","class_name":"Zeros","config":{},"regis'
    'tered_name":null},"kernel_regularizer":null,"bias_regularizer":null,"activity_regularizer":nu'
    'll,"kernel_constraint":null,"bias_constraint":null},"registered_name":null,"build_config":{"i'
    'nput_shape":[null,8,8,1]},"name":"conv2d","inbound_nodes":[{"args":[{"class_name":"__keras_t'
    'ensor__","config":{"shape":[null,8,8,1],"dtype":"float32","keras_history":["input_layer",0,0'
    ']}}],"kwargs":{}}]},{"module":"keras.layers","class_name":"Dense","config":{"name":"dense","t'
    'rainable":true,"dtype":{"module":"keras","class_name":"DTypePolicy","config":{"name":"float3'
    '2"},"registered_name":null},"units":64,"activation":"relu","use_bias":true,"kernel_initialize'
    'r":{"module":"keras.initializers","class_name":"GlorotUniform","config":{"seed":null,"input_a'
    'xes":null,"output_axes":null},"registered_name":null},"bias_initializer":{"module":"keras.ini'
    'tializers","class_name":"Zeros","config":{},"registered_name":null},"kernel_regularizer":null'
    ',"bias_regularizer":null,"kernel_constraint":null,"bias_constraint":null,"quantization_config'
    '":null},"registered_name":null,"build_config":{"input_shape":[null,64]},"name":"dense","inbou'
    'nd_nodes":[{"args":[{"class_name":"__keras_tensor__","config":{"shape":[null,64],"dtype":"flo'
    'at32","keras_history":["flatten",0,0]}}],"kwargs":{}}]}],"input_layers":[["input_layer",0,0]]'
    ',"output_layers":[["dense",0,0]]},"registered_name":"Functional","build_config":{"input_shape'
    '":null}}'
).encode("ascii")


class CodecError(ValueError):
    """A `.kcz` file (or bytes) that cannot be decoded: not one, truncated, corrupt or too new."""


def write_varint(out, value):
    """Appends `value` (an int >= 0) to the bytearray `out` as an unsigned LEB128 varint."""
    value = int(value)
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def varint_size(value):
    """The number of bytes of `value` as a varint."""
    return max(1, (int(value).bit_length() + 6) // 7)


class Reader:
    """Reads varints and bytes from `data`; running out raises `CodecError(what)`."""

    def __init__(self, data, what):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def varint(self):
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    def take(self, size):
        if size > len(self.data) - self.pos:
            raise CodecError(self.what)
        start, self.pos = self.pos, self.pos + size
        return self.data[start : self.pos]


# -- compression of the header and the raw stream ----------------------------------------------
def _deflate(data, dictionary, level=9):
    extra = {"zdict": dictionary} if dictionary else {}
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, **extra)
    return compressor.compress(data) + compressor.flush()


def _inflate(data, dictionary):
    extra = {"zdict": dictionary} if dictionary else {}
    decompressor = zlib.decompressobj(-15, **extra)
    out = decompressor.decompress(data) + decompressor.flush()
    if not decompressor.eof:
        raise zlib.error("incomplete deflate stream")
    return out


def compress(data, dictionary=b""):
    """`(method, compressed)`: raw deflate (with `dictionary`) or raw LZMA2, the smaller.

    Above 1 MiB, deflate level 6 alone (level 9 and LZMA take seconds on
    megabytes of floats and save under 1%).
    """
    if len(data) > _SLOW_LIMIT:
        return _DEFLATE, _deflate(data, dictionary, level=6)
    best = (_DEFLATE, _deflate(data, dictionary))
    packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return (_LZMA, packed) if len(packed) < len(best[1]) else best


def raw_size(array):
    """The compressed size of `array`'s byte planes: what storing it raw costs, about."""
    return len(compress(to_planes(array))[1])


def decompress(method, data, dictionary=b""):
    """Inverts `compress`; a bad stream is a `CodecError`."""
    try:
        if method == _LZMA:
            return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
        return _inflate(data, dictionary)
    except (zlib.error, lzma.LZMAError) as error:
        raise CodecError(f"a compressed section does not decompress ({error}).") from error


# -- the container ----------------------------------------------------------------------------
def pack(header, indices, raw):
    """The `.kcz` bytes of a header (`write_header`), an index stream and a raw stream."""
    header_method, header = compress(header, DICTIONARY)
    raw_method, raw = compress(raw)
    body = bytearray()
    write_varint(body, len(header) << 1 | header_method)
    body += header
    write_varint(body, len(indices) << 1 | raw_method)
    body += indices
    body += raw
    # The total counts the bytes of its own varint: iterate to the fixed point.
    fixed = len(MAGIC) + varint_size(FORMAT_VERSION) + len(body) + 4
    total = fixed + 1
    while fixed + varint_size(total) != total:
        total = fixed + varint_size(total)
    out = bytearray(MAGIC)
    write_varint(out, FORMAT_VERSION)
    write_varint(out, total)
    out += body
    out += zlib.crc32(out).to_bytes(4, "little")
    return bytes(out)


def unpack(data, source="the data"):
    """Checks a `.kcz` file's framing and returns `(header, indices, raw)`, decompressed.

    Args:
        data: the file's bytes.
        source: what to call it in errors (its path).

    Raises:
        CodecError: not a `.kcz` file, truncated, corrupt (CRC mismatch), or
            written in a newer format than `FORMAT_VERSION`.
    """
    data = bytes(data)
    if data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data):
            raise CodecError(f"{source} is truncated: {len(data)} bytes, not even a header.")
        raise CodecError(
            f"{source} is not a .kcz file: it starts with {data[: len(MAGIC)]!r}, a .kcz file "
            f"with {MAGIC!r} (kc.codec.save writes them)."
        )
    truncated = f"{source} is truncated: {len(data)} bytes, cut inside its header."
    reader = Reader(data, truncated)
    reader.take(len(MAGIC))
    version = reader.varint()
    if version > FORMAT_VERSION:
        raise CodecError(
            f"{source} was written by a newer keras-condensa (format {version}); this one "
            f"reads up to {FORMAT_VERSION}; upgrade keras-condensa."
        )
    total = reader.varint()
    if len(data) < total:
        raise CodecError(
            f"{source} is truncated: {len(data)} bytes of the {total} its header announces "
            "(an interrupted copy or download?)."
        )
    if len(data) > total or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise CodecError(
            f"{source} is corrupt: its CRC32 does not match its content (the file was "
            "modified or damaged after kc.codec.save wrote it)."
        )
    reader = Reader(data[reader.pos : -4], f"{source} is corrupt: a section runs past its end.")
    size = reader.varint()
    header = decompress(size & 1, reader.take(size >> 1), DICTIONARY)
    size = reader.varint()
    indices = bytes(reader.take(size >> 1))
    raw = decompress(size & 1, reader.take(len(reader.data) - reader.pos))
    return header, indices, raw


# -- the header: the model's config and the variable table -----------------------------------
def write_header(config, entries):
    """Returns the header bytes (uncompressed) of a model config and its variables.

    Args:
        config: the model's JSON config, UTF-8 bytes.
        entries: for each variable, `(dtype, shape, keys, counts)`: its NumPy
            dtype, its shape, and how it is coded. A palette: `keys`, the
            sorted distinct `to_keys` of its values, and `counts`, how many
            elements hold each. A zero map: `keys=None` and `counts`, the
            numbers of zero and nonzero elements. Raw: both None.
    """
    header = bytearray()
    write_varint(header, len(config))
    header += config
    write_varint(header, len(entries))
    for dtype, shape, keys, counts in entries:
        if dtype.name in DTYPES:
            header.append(DTYPES.index(dtype.name))
        else:
            name = dtype.name.encode("ascii")
            header.append(OTHER_DTYPE)
            write_varint(header, len(name))
            header += name
        write_varint(header, len(shape))
        for dim in shape:
            write_varint(header, dim)
        if keys is None:
            write_varint(header, 0 if counts is None else 1)
            if counts is not None:
                write_varint(header, counts[1])
        else:
            write_varint(header, len(keys) + 1)
            for delta in np.diff(keys, prepend=keys.dtype.type(0)).tolist():
                write_varint(header, delta)
            for count in counts[:-1].tolist():
                write_varint(header, count)
    return bytes(header)


def read_header(header, source):
    """Inverts `write_header`: returns `(config, entries)`.

    Raises:
        CodecError: the header is inconsistent (a corrupt file) or holds a
            dtype unknown here.
    """
    reader = Reader(header, f"{source} is corrupt: its header ends early.")
    config = bytes(reader.take(reader.varint()))
    entries = [_read_entry(reader, source) for _ in range(reader.varint())]
    if reader.pos != len(header):
        raise CodecError(f"{source} is corrupt: its header has extra bytes.")
    return config, entries


def _read_entry(reader, source):
    code = reader.take(1)[0]
    if code == OTHER_DTYPE:
        name = bytes(reader.take(reader.varint())).decode("ascii", "replace")
    elif code < len(DTYPES):
        name = DTYPES[code]
    else:
        raise CodecError(f"{source} is corrupt: unknown dtype code {code}.")
    try:
        dtype = numpy_dtype(name)
    except (TypeError, AttributeError) as error:
        raise CodecError(f"{source} holds a variable of dtype {name!r}, unknown here.") from error
    shape = tuple(reader.varint() for _ in range(reader.varint()))
    size = int(np.prod(shape, dtype=np.int64))
    method = reader.varint()
    if method == 0:
        return dtype, shape, None, None
    if method == 1:
        nonzero = reader.varint()
        if not 0 < nonzero < size:
            raise CodecError(f"{source} is corrupt: a zero map does not fit its variable.")
        return dtype, shape, None, np.array([size - nonzero, nonzero], np.int64)
    count = method - 1
    keys = [reader.varint()]
    for _ in range(count - 1):
        keys.append(keys[-1] + reader.varint())
    counts = [reader.varint() for _ in range(count - 1)]
    counts.append(size - sum(counts))
    if count > size or min(counts) < 1 or keys[-1] >> (8 * dtype.itemsize):
        raise CodecError(f"{source} is corrupt: a palette does not fit its variable.")
    return dtype, shape, np.array(keys, np.uint64), np.array(counts, np.int64)


# -- values: dtypes, sortable keys, byte planes ------------------------------------------------
def numpy_dtype(name):
    """The NumPy dtype of a Keras dtype name (`"bfloat16"` and float8 types from `ml_dtypes`)."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # noqa: PLC0415 - a Keras dependency, needed for bfloat16 and float8 only

        return np.dtype(getattr(ml_dtypes, name))


def _unsigned(itemsize):
    return np.dtype(f"u{itemsize}")


def _bits(array):
    """The bit patterns of `array`'s values, a flat array of native unsigned integers."""
    return np.ascontiguousarray(array).reshape(-1).view(_unsigned(array.dtype.itemsize))


def to_keys(array):
    """The values of `array` as unsigned integers that sort as the values do.

    Exact bit patterns: floats (`-0.0`, NaNs and all) map one to one, so
    distinct keys are distinct bit patterns.
    """
    bits = _bits(array)
    sign = bits.dtype.type(1) << bits.dtype.type(8 * bits.dtype.itemsize - 1)
    kind = _kind(array.dtype)
    if kind == "float":
        return np.where(bits & sign, ~bits, bits | sign)
    if kind == "int":
        return bits ^ sign
    return bits


def from_keys(keys, dtype):
    """Inverts `to_keys`: the values (a flat array of `dtype`) of unsigned `keys`."""
    keys = np.asarray(keys, _unsigned(dtype.itemsize))
    sign = keys.dtype.type(1) << keys.dtype.type(8 * keys.dtype.itemsize - 1)
    kind = _kind(dtype)
    if kind == "float":
        keys = np.where(keys & sign, keys ^ sign, ~keys)
    elif kind == "int":
        keys = keys ^ sign
    return np.ascontiguousarray(keys, keys.dtype).view(dtype)


def _kind(dtype):
    name = dtype.name
    if "float" in name:
        return "float"
    return "int" if name.startswith("int") else "unsigned"


def to_planes(array):
    """The little-endian bytes of `array`, byte-plane by byte-plane (all low bytes first).

    Floats' sign and exponent bytes then sit together, which deflate codes
    in fewer bits than interleaved values.
    """
    width = array.dtype.itemsize
    little = _bits(array).astype(f"<u{width}")
    return little.view(np.uint8).reshape(-1, width).T.tobytes()


def from_planes(data, dtype, count):
    """Inverts `to_planes`: `count` values of `dtype` from their byte planes."""
    width = dtype.itemsize
    planes = np.frombuffer(data, np.uint8).reshape(width, count)
    little = np.ascontiguousarray(planes.T).view(f"<u{width}").reshape(-1)
    return little.astype(_unsigned(width)).view(dtype)
