"""What libraries print, kept out of the terminal: a capture of file descriptors 1 and 2.

TensorFlow, absl, the TFLite converter and MLIR write their notices straight to
file descriptors 1 and 2 (`fully_quantize: 0, inference_type: 6, ...`, oneDNN
and CUDA notices, `WARNING: All log messages before absl::InitializeLog()`),
below Python, where `sys.stdout`, `warnings` and `logging` cannot reach them.
While a `LibraryLog` is active both descriptors point at a temporary file, so
those lines land there, with Python's warnings, the prints of anything writing
to `sys.stdout` or `sys.stderr` and the output of subprocesses (they inherit
the descriptors). The command line's own lines go to the terminal behind the
capture (`terminal`); `save` appends what was captured to a log file.

This module imports only the standard library, so the package can start the
capture of the `keras-condensa` program before TensorFlow loads
(`start_for_program`).

Example:

```python
log = LibraryLog().start()
try:
    print("ours", file=terminal("stderr"), flush=True)  # reaches the terminal
    os.write(2, b"a TensorFlow notice\\n")  # captured
finally:
    log.stop()
log.save("run.log", "# keras-condensa export")
```
"""

import atexit
import contextlib
import os
import sys
import tempfile

_FDS = (1, 2)
_active = None


def current():
    """The active `LibraryLog`, or None."""
    return _active


def terminal(name):
    """The stream the command line's own lines go to: `"stdout"` or `"stderr"`.

    `sys.stdout` (or `sys.stderr`) itself, unless it writes to a file
    descriptor an active `LibraryLog` captures: then a stream on the
    terminal (or whatever the descriptor was) behind the capture. A stream
    that writes elsewhere (pytest's `capsys`, a `StringIO`) is returned as is.

    Args:
        name: `"stdout"` or `"stderr"`.

    Returns:
        A text stream.
    """
    stream = getattr(sys, name)
    if _active is None:
        return stream
    return _active.terminal_stream(_fileno(stream)) or stream


@contextlib.contextmanager
def to_terminal():
    """A context in which `sys.stdout` and `sys.stderr` are the terminal streams (`terminal`).

    For code that prints with `print` and should be seen (argparse's help and
    errors).
    """
    with (
        contextlib.redirect_stdout(terminal("stdout")),
        contextlib.redirect_stderr(terminal("stderr")),
    ):
        yield


class LibraryLog:
    """Captures file descriptors 1 and 2 into a temporary file between `start` and `stop`.

    A process has one active capture at a time. When a descriptor is closed
    (a program started with `2>&-`), nothing is captured and the capture is
    inactive.

    Attributes:
        text: what was captured, once stopped ("" before).
    """

    def __init__(self):
        self.text = ""
        self._file = None
        self._saved = {}
        self._streams = {}

    @property
    def active(self):
        """Whether the descriptors point at the capture now."""
        return self._file is not None

    def start(self):
        """Points descriptors 1 and 2 at a temporary file; returns `self`.

        Raises:
            RuntimeError: another capture is active.
        """
        global _active
        if _active is not None:
            raise RuntimeError("a LibraryLog is already active; stop it first")
        _flush()
        try:
            for fd in _FDS:
                self._saved[fd] = os.dup(fd)
        except OSError:  # a closed descriptor: nothing to capture
            self._close_saved()
            return self
        self._file = tempfile.TemporaryFile(prefix="keras-condensa-")
        for fd in _FDS:
            os.dup2(self._file.fileno(), fd)
        _active = self
        return self

    def terminal_stream(self, fd):
        """A text stream on what descriptor `fd` was before the capture, or None."""
        if not self.active or fd not in self._saved:
            return None
        if fd not in self._streams:
            original = sys.__stdout__ if fd == 1 else sys.__stderr__
            self._streams[fd] = open(  # noqa: SIM115  Closed by `stop`.
                self._saved[fd],
                "w",
                buffering=1,
                encoding=getattr(original, "encoding", None) or "utf-8",
                errors="backslashreplace",
                closefd=False,
            )
        return self._streams[fd]

    def captured_bytes(self):
        """How many bytes were captured so far."""
        if self._file is None:
            return len(self.text.encode())
        return os.fstat(self._file.fileno()).st_size

    def stop(self):
        """Puts descriptors 1 and 2 back and reads what was captured (idempotent).

        Returns:
            The captured text (`text`).
        """
        global _active
        if self._file is None:
            return self.text
        _flush()
        for stream in self._streams.values():
            stream.close()
        self._streams = {}
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
        self._close_saved()
        self._file.seek(0)
        self.text += self._file.read().decode("utf-8", errors="replace")
        self._file.close()
        self._file = None
        _active = None
        return self.text

    def release(self):
        """Stops, and writes what was captured to the terminal's stderr (nothing is lost)."""
        if not self.active:
            return
        text = self.stop()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    def save(self, path, header):
        """Appends the captured text under a `header` line to `path` (not when it is empty).

        Args:
            path: the log file.
            header: the line written first (what ran, and when).

        Returns:
            Whether anything was written.

        Raises:
            OSError: `path` cannot be written.
        """
        text = self.stop()
        if not text.strip():
            return False
        with open(path, "a", encoding="utf-8") as f:
            f.write(header.rstrip("\n") + "\n" + text + ("" if text.endswith("\n") else "\n"))
        return True

    def _close_saved(self):
        for saved in self._saved.values():
            os.close(saved)
        self._saved = {}


def start_for_program():
    """Starts a `LibraryLog` when this process is the `keras-condensa` program.

    For the package's `__init__`, before TensorFlow is imported (its notices
    are printed as it loads). Nothing happens in any other program, with
    `--verbose` on the command line, or when a capture is active. The command
    line takes the capture over (`current`); one it never took over is
    stopped at exit and its text written to stderr.

    Returns:
        The started `LibraryLog`, or None.
    """
    if _active is not None or not _is_program() or "--verbose" in sys.argv[1:]:
        return None
    log = LibraryLog().start()
    atexit.register(log.release)
    return log


def _is_program():
    """Whether this process runs `keras-condensa` or `python -m keras_condensa.cli`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name.removesuffix(".exe") == "keras-condensa":
        return True
    argv = getattr(sys, "orig_argv", ())  # sys.argv[0] is "-m" while the package imports
    pairs = zip(argv, argv[1:], strict=False)
    return any(a == "-m" and b == "keras_condensa.cli" for a, b in pairs)


def _fileno(stream):
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def _flush():
    """Flushes Python's and C's buffered output, so it goes where the descriptors point now."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    with contextlib.suppress(AttributeError, OSError, TypeError):  # no C library (rare)
        import ctypes

        ctypes.CDLL(None).fflush(None)
