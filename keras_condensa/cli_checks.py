"""The command line's validation layer: every subcommand's arguments, checked before any work.

Single values are checked by argparse types (`int_at_least`, `fraction`) as
the command line is parsed; files by `check_paths`, from one table of what
each subcommand reads and writes. Every failure is a `UsageError` or an
argparse error, and the command line exits with status 2.
"""

import argparse
import os
import tempfile


class UsageError(Exception):
    """Bad usage or bad input: exit status 2, one line on stderr."""


# Per subcommand: the input files (attribute, what it is) and the output
# (attribute, extension of the file written, or None for a directory).
_INPUTS = {
    "compress": (("model", "model"), ("data", "data")),
    "search": (("model", "model"), ("data", "data")),
    "export": (("model", "model"), ("data", "data")),
    "bench": (("model", "model"), ("data", "data")),
    "demo": (),
}
_OUTPUTS = {
    "compress": ("out", ".keras"),
    "search": ("out", None),
    "export": ("out", ".tflite"),
    "demo": ("out", None),
}
_WRITES = {".keras": "a .keras model", ".tflite": "a LiteRT (.tflite) file"}


def int_at_least(minimum):
    """An argparse type: an integer >= `minimum`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def fraction(text):
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _check_writable(directory, flag):
    """Raises unless files can be created in the existing `directory`."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag}: cannot write to {directory} (permission denied); choose a writable location"
        )
    try:  # os.access cannot see read-only mounts under root, ACLs or full quotas.
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(
            f"{flag}: cannot write to {directory} ({e.strerror}); choose a writable location"
        ) from None


def _same_file(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_output(args, attr, extension):
    path = getattr(args, attr)
    flag = f"--{attr}"
    for name, _ in _INPUTS[args.command]:
        source = getattr(args, name, None)
        if source and _same_file(path, source):
            raise UsageError(
                f"{flag} {path} is the input {name} file; writing there would destroy it. "
                f"Choose another {flag}"
            )
    if extension is None:  # a directory, created if need be
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{flag} {path} exists and is not a directory")
        existing = os.path.abspath(path)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"{flag} {path}: {existing} is a file, not a directory")
        _check_writable(existing, flag)
        return
    if not path.lower().endswith(extension):
        raise UsageError(
            f"{flag} {path}: {args.command} writes {_WRITES[extension]}; give a file name "
            f"ending in {extension}"
        )
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path}: {parent} is not an existing directory")
    _check_writable(parent, flag)


def check_paths(args):
    """Checks a parsed command line's files before any work.

    Inputs must exist; an output must not be an input, must have the
    extension of what is written, and its directory must be writable.

    Raises:
        UsageError: naming the argument, the path and the fix.
    """
    for name, kind in _INPUTS[args.command]:
        path = getattr(args, name, None)
        if path is not None and not os.path.isfile(path):
            what = "not a file" if os.path.exists(path) else "not found"
            raise UsageError(f"{kind} file {what}: {path}")
    if args.command in _OUTPUTS:
        _check_output(args, *_OUTPUTS[args.command])
