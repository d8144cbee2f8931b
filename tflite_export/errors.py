"""Exceptions raised by `tflite_export`.

Each subclasses the built-in exception a caller would expect (`ValueError` for
bad input, `RuntimeError` for a converter or runtime failure), so that
`except ValueError:` keeps working, while the extra attributes say what went wrong.
"""


class UnsupportedOpsError(ValueError):
    """The TFLite converter cannot lower some TensorFlow ops to LiteRT builtins.

    Attributes:
        select_tf_ops: ops that have a Flex (Select TF ops) kernel; they convert
            with `allow_select_tf_ops=True`.
        custom_ops: ops with neither a builtin nor a Flex kernel.
    """

    def __init__(self, message, select_tf_ops=(), custom_ops=()):
        super().__init__(message)
        self.select_tf_ops = tuple(select_tf_ops)
        self.custom_ops = tuple(custom_ops)

    @property
    def ops(self):
        """All the ops the converter could not lower, Flex ones first."""
        return self.select_tf_ops + self.custom_ops


class InvalidTFLiteFileError(ValueError):
    """A file or byte string is not a LiteRT (TFLite) flatbuffer the runtime can load."""


class ConversionError(RuntimeError):
    """The converter, or the runtime check after it, failed for another reason."""


class ExportWarning(UserWarning):
    """`export` changed something from the request (see `ExportResult.fallback`)."""


def missing_dependency(package, purpose, error):
    """The `ImportError` to raise when an `[export]` dependency is not installed.

    Args:
        package: the pip name of the missing package.
        purpose: what `tflite_export` needs it for.
        error: the original `ImportError`.

    Returns:
        An `ImportError` naming the extra to install.
    """
    return ImportError(
        f"tflite_export needs {package} for {purpose}, and importing it failed: {error}. "
        "Install the export extra: pip install 'keras-condensa[export]'"
    )
