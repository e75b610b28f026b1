"""The command lines: `ghostface`, `ghostface-train`, `ghostface-eval`, `ghostface-export`, `ghostface-convert`,
`ghostface-zoo` (root `train.py` / `eval.py` are shims over `train` / `evaluate` here).

One convention for all of them:
- exit status 0: done; 1: the command ran but its result failed a check (export parity missed its threshold,
  a process of a multi-process run was lost); 2: bad input (options, files, models, data), reported as one
  line `<prog>: error: <file>: <problem>` on stderr (`-v` / `--verbose` adds the traceback where offered);
  130: interrupted.
- `--help` answers without importing TensorFlow; TensorFlow's start-up lines are kept off the terminal.

The library never imports this package.

Example:
    >>> from ghostface_keras.cli import EXIT_BAD_INPUT
    >>> EXIT_BAD_INPUT
    2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import Callable
from collections.abc import Iterator

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def quiet_tensorflow_logs() -> None:
    """Silence TensorFlow's C++ log lines (set before TensorFlow is imported; an explicit setting wins)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file; replay it only if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_backend_quietly() -> None:
    """Import Keras (and so its backend) with TensorFlow's start-up lines swallowed.

    TensorFlow >= 2.18 writes some of them before its logging is initialized, so no environment variable
    stops them; they go to a temporary file instead and are shown only if the import fails.
    """
    quiet_tensorflow_logs()
    if "keras" in sys.modules:
        return
    try:
        with _stderr_captured():
            import keras  # noqa: F401
    except ImportError:
        raise
    except OSError:  # no usable file descriptor 2 (embedded interpreters): import normally
        import keras  # noqa: F401


def error_line(prog: str, error: BaseException) -> str:
    """The one line a command prints for a failure.

    Example:
        >>> error_line("ghostface", FileNotFoundError("a.jpg: not found"))
        'ghostface: error: a.jpg: not found'
    """
    text = str(error).strip().splitlines()
    return f"{prog}: error: {text[0] if text else type(error).__name__}"


def option_flag(name: str) -> str:
    """The command-line option of a library setting: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def settings_as_flags(error: BaseException) -> str:
    """The message of a library error with the settings it names (`error.fields`, spelled as in the library)
    spelled as command-line options: `batch_size` -> `--batch-size`. Names inside paths or longer words stay.

    Example:
        >>> from ghostface_keras.core.errors import GhostFaceError
        >>> settings_as_flags(GhostFaceError("data runs/data: no such file or directory", fields=("data",)))
        '--data runs/data: no such file or directory'
    """
    import re

    text = str(error)
    for name in sorted(getattr(error, "fields", ()), key=len, reverse=True):
        text = re.sub(rf"(?<![\w/.\\-]){re.escape(name)}(?![\w/.\\-])", option_flag(name), text)
    return text


def run_reporting_errors(prog: str, body: Callable[[], int], verbose: bool = False) -> int:
    """Run a command's work; turn our errors and operating-system errors into one line and exit status 2,
    Ctrl-C into 130. `verbose` re-raises after the line (the traceback of `-v`).

    Example:
        >>> def work() -> int:
        ...     raise FileNotFoundError(2, "No such file or directory", "faces/")
        >>> run_reporting_errors("ghostface-demo", work)      # the line goes to stderr
        2
    """
    from ghostface_keras.core.errors import GhostFaceError
    from ghostface_keras.core.files import describe_os_error

    try:
        return body()
    except (GhostFaceError, OSError) as error:
        message = describe_os_error(error) if isinstance(error, OSError) else settings_as_flags(error)
        print(error_line(prog, message), file=sys.stderr)
        if verbose:
            raise
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def check_gallery_argument(gallery: str):
    """Refuse a --gallery that cannot be one before TensorFlow or the model loads: missing, an empty folder, or
    neither a folder nor a `.npz`. Returns the `Gallery` of a `.npz` (read with numpy only), None for a folder
    (embedded once the model is loaded).

    Example:
        >>> check_gallery_argument("no_such_people/")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: no_such_people/: gallery folder or .npz not found
    """
    from pathlib import Path

    from ghostface_keras.core.errors import DataError
    from ghostface_keras.core.files import check_input_paths, list_images
    from ghostface_keras.faces.embedder import Gallery

    from ghostface_keras.gallery.store import is_gallery_folder

    check_input_paths([(gallery, "gallery folder or .npz")])
    path = Path(gallery)
    if is_gallery_folder(path):  # a persistent gallery (`ghostface gallery create`): opened once the model loads
        return None
    if path.is_dir():
        if not list_images(path):
            raise DataError(f"{path}: gallery folder has no image files")
        return None
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: --gallery must be a folder of photos or a .npz gallery")
    return Gallery.load(path)  # a malformed or hostile .npz: one DataError naming it


# argparse types shared by the commands: their ArgumentTypeError text is what the usage error (exit 2) shows
def positive_int(text: str) -> int:
    """An integer >= 1.

    Example:
        >>> positive_int("3")
        3
    """
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0.

    Example:
        >>> non_negative_int("0")
        0
    """
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def number_in(text: str, low: float, high: float, refusal: str) -> float:
    """`text` as a number in [low, high], or `ArgumentTypeError(refusal)` (not a number, nan, out of range).

    Example:
        >>> number_in("2.5", 0, 10, "expected 0 to 10")
        2.5
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan
        raise argparse.ArgumentTypeError(refusal)
    return value


def cosine_threshold(text: str) -> float:
    """A cosine threshold: a finite number in [-1, 1] (nan refused too).

    Example:
        >>> cosine_threshold("0.21")
        0.21
    """
    return number_in(text, -1.0, 1.0, f"{text} is not a cosine threshold in [-1, 1]")
