"""Exceptions raised by ghostface_keras, one per domain.

Every error names the file (and where it applies the record or layer) and what was expected, so a
user can act on the message without reading a traceback.
"""

from __future__ import annotations


class GhostFaceError(Exception):
    """Base class of every error this library raises on purpose.

    `fields` are the settings the message names, spelled as in the library (`batch_size`); a command line
    names them as its options instead (`ghostface_keras.cli.settings_as_flags`: `--batch-size`).

    Example:
        >>> error = GhostFaceError("batch_size must be >= 1, got 0", fields=("batch_size",))
        >>> str(error), error.fields
        ('batch_size must be >= 1, got 0', ('batch_size',))
    """

    def __init__(self, *args: object, fields: tuple[str, ...] = ()):
        super().__init__(*args)
        self.fields = tuple(fields)


class DataError(GhostFaceError, ValueError):
    """Unreadable, truncated, malicious or empty data (image folders, RecordIO, `.bin` files)."""


class ConversionError(GhostFaceError, ValueError):
    """An official `.h5` file that cannot be mapped onto one of our models."""


class ModelNameError(GhostFaceError, KeyError):
    """A model name that the registry does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NoFaceError(GhostFaceError, ValueError):
    """No face was found in an image that had to contain one."""


class ExportError(GhostFaceError, RuntimeError):
    """An export whose result does not match the Keras model (parity) or cannot be produced."""


class ModelLoadError(GhostFaceError, ValueError):
    """A model path that does not exist, or that no supported loader (.keras, .h5, SavedModel, .tflite) can read."""
