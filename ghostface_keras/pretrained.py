"""Released GhostFaceNets checkpoints: where they are, what they are, and a one-call loader.

The official authors publish Keras-2 `.h5` files as GitHub release assets (the table of them is
`ghostface_keras.checkpoints`). `load_pretrained`
downloads one (cached, hash-checked when the hash is known), converts it once with
`ghostface_keras.convert.load_official` and caches the converted `.keras` model.

Example:
    >>> from ghostface_keras import load_pretrained
    >>> model = load_pretrained("GhostFaceNetV1-0.5-2")        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ghostface_keras.checkpoints import CHECKPOINTS, Checkpoint, get_checkpoint, list_pretrained
from ghostface_keras.errors import GhostFaceError
from ghostface_keras.files import atomic_output

log = logging.getLogger(__name__)

CACHE_SUBDIR = "ghostface_keras"


class PretrainedError(GhostFaceError, OSError):
    """A checkpoint that cannot be fetched or verified (offline, wrong hash)."""


def default_cache_dir() -> str:
    """`$GHOSTFACE_HOME`, else `~/.keras` (Keras' own cache root); files go to `<dir>/ghostface_keras/`."""
    return os.environ.get("GHOSTFACE_HOME") or os.path.join(os.path.expanduser("~"), ".keras")


def _fetch(checkpoint: Checkpoint, cache_dir: str, origin: Optional[str]) -> str:
    import keras

    target = os.path.join(cache_dir, CACHE_SUBDIR, checkpoint.release, checkpoint.filename)
    try:
        return keras.utils.get_file(
            fname=checkpoint.filename,
            origin=origin or checkpoint.url,
            file_hash=checkpoint.sha256,
            hash_algorithm="sha256",
            cache_dir=cache_dir,
            cache_subdir=os.path.join(CACHE_SUBDIR, checkpoint.release),
        )
    except ValueError as error:  # get_file's hash mismatch
        raise PretrainedError(f"{target}: {error}. Delete the file and download it again.") from None
    except Exception as error:  # noqa: BLE001 - urllib raises many kinds; all mean "could not fetch"
        raise PretrainedError(
            f"could not download {origin or checkpoint.url} ({type(error).__name__}: {error}). "
            f"If you are offline, download it elsewhere and put it at {target}"
            + (f" (sha256 {checkpoint.sha256})" if checkpoint.sha256 else "")) from None


def load_pretrained(name: str, cache_dir: Optional[str] = None, origin: Optional[str] = None):
    """Our Keras 3 model with the official released weights of `name`.

    `name` is a checkpoint name (`list_pretrained()`) or a registry model name, which picks its
    best released checkpoint. The `.h5` is downloaded once into `<cache_dir>/ghostface_keras/`
    (hash-checked when the hash is known), converted once, and the `.keras` result is reused.
    `origin` replaces the download URL (a mirror, or a local `file://` URL).

    Raises:
        ModelNameError: unknown name. PretrainedError: offline or wrong hash; the message says
            where to put the file by hand.

    Example:
        >>> model = load_pretrained("GhostFaceNetV1-1.3-1")     # doctest: +SKIP
        >>> model.output_shape                                  # doctest: +SKIP
        (None, 512)
    """
    import keras

    from ghostface_keras.convert import load_official

    checkpoint = get_checkpoint(name)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    converted = os.path.join(cache_dir, CACHE_SUBDIR, checkpoint.release,
                             os.path.splitext(checkpoint.filename)[0] + ".keras")
    if os.path.exists(converted):
        return keras.models.load_model(converted, compile=False)
    source = _fetch(checkpoint, cache_dir, origin)
    model = load_official(source)
    with atomic_output(converted) as temporary:
        model.save(temporary)
    log.info("converted %s -> %s", source, converted)
    return model


__all__ = ["CHECKPOINTS", "Checkpoint", "PretrainedError", "default_cache_dir", "get_checkpoint", "list_pretrained",
           "load_pretrained"]
