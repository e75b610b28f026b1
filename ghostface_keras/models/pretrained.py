"""`load_pretrained(name)`: a released checkpoint as our Keras 3 model, downloaded and converted once.

The `.h5` comes from `ghostface_keras.weights.download` (cached, sha256-verified); it is converted once with
`ghostface_keras.models.official.load_official` and the converted `.keras` model is cached beside it, with the
hashes of both files recorded so that a tampered conversion is converted again.

Example:
    >>> from ghostface_keras import load_pretrained
    >>> model = load_pretrained("GhostFaceNetV1-0.5-2")        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

from ghostface_keras.core.files import atomic_output, write_atomically
from ghostface_keras.weights.checkpoints import get_checkpoint
from ghostface_keras.weights.download import (
    CACHE_SUBDIR,
    PretrainedError,
    default_cache_dir,
    fetch,
    file_sha256,
    recorded_sha256,
    verify_sha256,
)

log = logging.getLogger(__name__)

__all__ = ["PretrainedError", "load_pretrained"]


def load_pretrained(name: str, cache_dir: str | None = None, origin: str | None = None,
                    sha256: str | None = None):
    """Our Keras 3 model with the official released weights of `name`.

    `name` is a checkpoint name (`list_pretrained()`) or a registry model name, which picks its
    best released checkpoint. The `.h5` is downloaded once into `<cache_dir>/ghostface_keras/`,
    checked against a sha256 (see the module docstring; `sha256` pins one), converted once, and the
    `.keras` result is reused. `origin` replaces the download URL (a mirror, or a local `file://` URL).

    Raises:
        ModelNameError: unknown name. PretrainedError: offline, or a file whose sha256 is not the
            expected one; the message says where to put the file by hand.

    Example:
        >>> model = load_pretrained("GhostFaceNetV1-1.3-1")     # doctest: +SKIP
        >>> model.output_shape                                  # doctest: +SKIP
        (None, 512)
    """
    import keras

    from ghostface_keras.models.official import load_official

    checkpoint = get_checkpoint(name)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    converted = os.path.join(cache_dir, CACHE_SUBDIR, checkpoint.release,
                             os.path.splitext(checkpoint.filename)[0] + ".keras")
    recorded = recorded_sha256(converted) if os.path.exists(converted) else []
    # reuse a conversion only with its record (else convert again), and, with a pinned hash, only one made
    # from that very file
    if len(recorded) == 2 and (not sha256 or recorded[1] == sha256.lower()):
        verify_sha256(converted, recorded[0], "sha256 recorded when it was converted")
        return keras.models.load_model(converted, compile=False)
    source = fetch(checkpoint, cache_dir, origin, sha256)
    model = load_official(source)
    with atomic_output(converted) as temporary:
        model.save(temporary)
    write_atomically(converted + ".sha256", f"{file_sha256(converted)} {file_sha256(source)}\n")
    log.info("converted %s -> %s", source, converted)
    return model


