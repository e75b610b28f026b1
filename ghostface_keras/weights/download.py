"""Downloads of released checkpoints: fetched once into a cache folder and verified by sha256.

The official authors publish Keras-2 `.h5` files as GitHub release assets (the table of them is
`ghostface_keras.weights.checkpoints`). `fetch_checkpoint` downloads one (cached) and returns its path;
`ghostface_keras.models.pretrained.load_pretrained` converts it into our model.

Every file is checked against a sha256 before it is used: the table's published hash, or one you pin
(`sha256=`); a checkpoint without either gets its hash recorded on first download (trust on first use:
`<file>.sha256` beside it, and a warning that prints it so you can pin it), and every later load verifies
it. The converted `.keras` is checked against the hash recorded when it was written.

Example:
    >>> from ghostface_keras.weights.download import fetch_checkpoint
    >>> path = fetch_checkpoint("GhostFaceNetV1-0.5-2")        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

from ghostface_keras.weights.checkpoints import Checkpoint, get_checkpoint
from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.core.files import write_atomically

log = logging.getLogger(__name__)

CACHE_SUBDIR = "ghostface_keras"


class PretrainedError(GhostFaceError, OSError):
    """A checkpoint that cannot be fetched or verified (offline, wrong hash)."""


def default_cache_dir() -> str:
    """`$GHOSTFACE_HOME`, else `~/.keras` (Keras' own cache root); files go to `<dir>/ghostface_keras/`."""
    return os.environ.get("GHOSTFACE_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "empty.h5")
        >>> open(path, "wb").close()
        >>> file_sha256(path)[:16]
        'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_sha256(path: str) -> list[str]:
    """The hashes recorded beside `path` (`<path>.sha256`: its own, then for a converted model its source's),
    or [] when there is no record."""
    record = path + ".sha256"
    if not os.path.exists(record):
        return []
    with open(record, "rb") as handle:
        hashes = handle.read(400).decode("ascii", errors="replace").split()
    if not hashes or not all(re.fullmatch(r"[0-9a-f]{64}", value) for value in hashes):
        raise PretrainedError(f"{record}: not a sha256 record; delete it and {path} to download again")
    return hashes


def verify_sha256(path: str, expected: str | None, where: str) -> None:
    """Check `path` against `expected` (from `where`); with no expectation, record its hash for later loads."""
    actual = file_sha256(path)
    if expected is None:
        write_atomically(path + ".sha256", actual + "\n")
        log.warning("%s: no published sha256 for this file; recorded %s in %s.sha256, checked on every later load "
                    "(pin it with load_pretrained(..., sha256=%r))", path, actual, path, actual)
    elif actual != expected.lower():
        raise PretrainedError(f"{path}: sha256 {actual} is not the {where} {expected}: the file is damaged or not "
                              "the released one; delete it to download it again")


def fetch(checkpoint: Checkpoint, cache_dir: str, origin: str | None, sha256: str | None) -> str:
    import keras

    target = os.path.join(cache_dir, CACHE_SUBDIR, checkpoint.release, checkpoint.filename)
    expected, where = (sha256, "pinned sha256") if sha256 else (checkpoint.sha256, "published sha256")
    if expected is None and os.path.exists(target):
        expected, where = (recorded_sha256(target) or [None])[0], "sha256 recorded at its first download"
    try:
        path = keras.utils.get_file(fname=checkpoint.filename, origin=origin or checkpoint.url, cache_dir=cache_dir,
                                    cache_subdir=os.path.join(CACHE_SUBDIR, checkpoint.release))
    except Exception as error:  # noqa: BLE001 - urllib raises many kinds; all mean "could not fetch"
        raise PretrainedError(
            f"could not download {origin or checkpoint.url} ({type(error).__name__}: {error}). "
            f"If you are offline, download it elsewhere and put it at {target}"
            + (f" (sha256 {expected})" if expected else "")) from None
    verify_sha256(path, expected, where)
    return path



def fetch_checkpoint(name: str, cache_dir: str | None = None, origin: str | None = None,
                     sha256: str | None = None) -> str:
    """The local path of the released `.h5` of `name` (a checkpoint or registry model name), downloaded once
    into `<cache_dir>/ghostface_keras/<release>/` and verified (published, pinned or first-use sha256).

    Raises:
        ModelNameError: unknown name. PretrainedError: offline, or a file whose sha256 is not the expected one.

    Example:
        >>> fetch_checkpoint("GhostFaceNetV1-0.5-2")       # doctest: +SKIP
        '/root/.keras/ghostface_keras/GhostFaceNetV1-0.5-2-ArcFace-MS1MV2/GN_W0.5_S2_ArcFace_epoch16.h5'
    """
    return fetch(get_checkpoint(name), os.path.abspath(cache_dir or default_cache_dir()), origin, sha256)


__all__ = ["PretrainedError", "default_cache_dir", "fetch_checkpoint", "file_sha256"]
