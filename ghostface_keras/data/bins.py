"""insightface verification `.bin` files, loaded without trusting the pickle.

A `.bin` is a pickle of `(bins, issame_list)`: 2N encoded images (pair i = bins[2i], bins[2i+1]) and N
booleans. `pickle.load` would run any callable a hostile file names; `load_bin` unpickles with an
allow-list that admits only what these files contain (tuples, lists, bytes, bools, and the few numpy
reconstructors some files need for array or buffer entries), so a malicious file raises `DataError`
and executes nothing. Both the raw Python-2 files (read with `encoding="bytes"`) and files rewritten by
the official `prepare_data.py -T` (every entry plain `bytes`) load the same way, because every entry is
coerced to bytes here.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
from pathlib import Path
from collections.abc import Sequence

import numpy as np

try:  # numpy >= 2 moved the array reconstructors; old pickles name either module
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

from ghostface_keras.data.decode import decode_many
from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import write_atomically


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 pickles `bytes` at protocol <= 2 as `_codecs.encode(text, "latin1")`; allow only that."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only callables a `.bin` may name, each mapped to the object to use instead of an import."""
    allowed: dict[tuple[str, str], object] = {
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # array reconstruction helpers, under both the numpy 1.x and 2.x module names
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _multiarray._reconstruct
        allowed[(module, "scalar")] = _multiarray.scalar
    return allowed


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names a callable a `.bin` never needs (the unsafe case, as opposed to a damaged file)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside `_allowed_globals` (so no code can run), and sizes that the
    file cannot hold: `bytearray(n)` allocates n zero bytes, so a 37-byte pickle could ask for gigabytes."""

    _allowed = _allowed_globals()

    def __init__(self, stream: io.BytesIO, size_limit: int) -> None:
        super().__init__(stream, encoding="bytes")
        self.size_limit = size_limit

    def _bounded_bytearray(self, *args):
        if args and isinstance(args[0], int) and not 0 <= args[0] <= self.size_limit:
            raise _RefusedGlobal(f"bytearray({args[0]}) asks for more bytes than the {self.size_limit}-byte file holds")
        return bytearray(*args)

    def find_class(self, module: str, name: str):
        try:
            found = self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refused to load {module}.{name}: not a container type a .bin holds") from None
        return self._bounded_bytearray if found is bytearray else found


def _restricted_load(blob: bytes, path: Path):
    try:
        return _RestrictedUnpickler(io.BytesIO(blob), size_limit=len(blob)).load()
    except _RefusedGlobal as error:
        raise DataError(f"{path}: not a safe verification .bin ({error})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, struct.error) as error:
        raise DataError(f"{path}: truncated or corrupt .bin ({type(error).__name__}: {error})") from None


def _as_bytes(entry, path: Path, index: int) -> bytes:
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return bytes(entry)
    if isinstance(entry, np.ndarray) and entry.dtype == np.uint8:
        return entry.tobytes()
    raise DataError(f"{path}: image entry {index} is a {type(entry).__name__}, expected encoded image bytes")


def read_bin_entries(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """The raw content of a `.bin`: the encoded images (as bytes) and the bool per pair, validated.

    Example:
        >>> import tempfile
        >>> path = save_bin(f"{tempfile.mkdtemp()}/lfw.bin", np.zeros((4, 112, 112, 3), np.uint8), [True, False])
        >>> encoded, issame = read_bin_entries(path)
        >>> len(encoded) == 2 * len(issame), encoded[0][:4], issame.tolist()
        (True, b'\\x89PNG', [True, False])
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    content = _restricted_load(blob, path)
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(content).__name__}")
    bins, issame = content
    if not isinstance(bins, (list, tuple, np.ndarray)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: expected (list of encoded images, list of bools)")
    encoded = [_as_bytes(entry, path, index) for index, entry in enumerate(bins)]
    if any(not isinstance(value, (bool, np.bool_, int, np.integer)) for value in issame):
        raise DataError(f"{path}: issame_list must hold booleans")
    issame = np.asarray([bool(value) for value in issame], dtype=bool)
    if len(encoded) != 2 * len(issame):
        raise DataError(f"{path}: {len(encoded)} images for {len(issame)} pairs (expected exactly 2 per pair)")
    return encoded, issame


def load_bin(path: str | os.PathLike, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Load an insightface verification `.bin` safely: `(uint8 images (2N, 112, 112, 3) RGB, bool issame (N,))`.

    Pair i is `images[2 * i]`, `images[2 * i + 1]`. Raises `DataError` naming the file for a malicious,
    truncated or malformed file, or for an image entry that does not decode.

    Example:
        >>> import tempfile
        >>> pixels = np.zeros((4, 112, 112, 3), np.uint8)
        >>> path = save_bin(f"{tempfile.mkdtemp()}/val_pairs.bin", pixels, [True, False])
        >>> images, issame = load_bin(path)
        >>> images.shape, issame.shape          # CelebA's val_pairs.bin: ((1200, 112, 112, 3), (600,))
        ((4, 112, 112, 3), (2,))
    """
    encoded, issame = read_bin_entries(path)
    images, failures = decode_many(len(encoded), encoded.__getitem__, image_size, progress_label=f"Decoding {path}")
    if failures:
        index, reason = failures[0]
        raise DataError(f"{path}: image entry {index} does not decode ({reason}); {len(failures)} bad entries in all")
    return images, issame


def save_bin(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[bytes],
    issame: Sequence[bool],
    image_format: str = "PNG",
    quality: int = 95,
) -> Path:
    """Write an insightface-format `.bin` (pickle protocol 4), atomically.

    `images` is either a uint8 array (2N, H, W, 3), encoded here as PNG (lossless, the default) or JPEG,
    or a sequence of already encoded images (stored unchanged).

    Example:
        >>> images = np.zeros((4, 112, 112, 3), np.uint8)
        >>> import tempfile
        >>> save_bin(f"{tempfile.mkdtemp()}/two_pairs.bin", images, [True, False])
        PosixPath('.../two_pairs.bin')
    """
    path = Path(path)
    issame = [bool(value) for value in issame]
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"{path}: images must be uint8 (2N, H, W, 3), got {images.dtype} {images.shape}")
        encoded = [encode_image(image, image_format, quality) for image in images]
    else:
        encoded = [bytes(entry) for entry in images]
    if len(encoded) != 2 * len(issame):
        raise DataError(f"{path}: {len(encoded)} images for {len(issame)} pairs (expected exactly 2 per pair)")
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            pickle.dump((encoded, issame), handle, protocol=4)

    return write_atomically(path, write)


def encode_image(image: np.ndarray, image_format: str = "PNG", quality: int = 95) -> bytes:
    """Encode one uint8 RGB image as PNG or JPEG bytes.

    Example:
        >>> encode_image(np.zeros((112, 112, 3), np.uint8))[:4]
        b'\\x89PNG'
    """
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": quality} if image_format.upper() in ("JPEG", "JPG") else {}
    Image.fromarray(image).save(buffer, "JPEG" if image_format.upper() == "JPG" else image_format.upper(), **options)
    return buffer.getvalue()
