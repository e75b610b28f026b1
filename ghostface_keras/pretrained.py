"""Released GhostFaceNets checkpoints: where they are, what they are, and a one-call loader.

The official authors publish Keras-2 `.h5` files as GitHub release assets. `load_pretrained`
downloads one (cached, hash-checked when the hash is known), converts it once with
`ghostface_keras.convert.load_official` and caches the converted `.keras` model.

Example:
    >>> from ghostface_keras import load_pretrained
    >>> model = load_pretrained("GhostFaceNetV1-0.5-2")        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

from ghostface_keras.errors import GhostFaceError, ModelNameError
from ghostface_keras.registry import canonical_name

log = logging.getLogger(__name__)

RELEASES = "https://github.com/HamadYA/GhostFaceNets/releases/download"
CACHE_SUBDIR = "ghostface_keras"


class PretrainedError(GhostFaceError, OSError):
    """A checkpoint that cannot be fetched or verified (offline, wrong hash)."""


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint. `reported` are the official README's accuracies in % (IJB at
    TAR@FAR=1e-4); `model` is the registry name of the architecture it converts to."""

    name: str
    model: str
    filename: str
    release: str
    loss: str
    training_set: str
    sha256: Optional[str] = None
    reported: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""

    @property
    def url(self) -> str:
        return f"{RELEASES}/{self.release}/{self.filename}"


CHECKPOINTS: Dict[str, Checkpoint] = {c.name.lower(): c for c in (
    Checkpoint("GhostFaceNetV1-0.5-2-ArcFace-MS1MV2", "GhostFaceNetV1-0.5-2", "GN_W0.5_S2_ArcFace_epoch16.h5", "v1.0",
               "ArcFace", "MS1MV2", sha256="2beca52a2aeadfa81ed5ebab35e2a58f7c79e3c1ffda80a31511861870151715",
               reported={"LFW": 99.783, "CFP-FP": 83.4, "AgeDB-30": 91.13},
               notes="hash of a byte-identical third-party copy; README's LFW figure is likely a typo"),
    Checkpoint("GhostFaceNetV1-1-2-ArcFace-MS1MV2", "GhostFaceNetV1-1-2", "GN_W1_S2_ArcFace_epoch18.h5", "v1.1",
               "ArcFace", "MS1MV2", reported={"LFW": 99.383, "CFP-FP": 88.81, "AgeDB-30": 94.85}),
    Checkpoint("GhostFaceNetV1-1.3-1-ArcFace-MS1MV3", "GhostFaceNetV1-1.3-1", "GhostFaceNet_W1.3_S1_ArcFace.h5", "v1.2",
               "ArcFace", "MS1MV3",
               reported={"LFW": 99.73, "CFP-FP": 96.83, "AgeDB-30": 98.00, "IJB-B": 93.12, "IJB-C": 94.94},
               notes="the checkpoint deepface uses"),
    Checkpoint("GhostFaceNetV1-1.3-2-ArcFace-MS1MV3", "GhostFaceNetV1-1.3-2", "GhostFaceNet_W1.3_S2_ArcFace.h5", "v1.3",
               "ArcFace", "MS1MV3",
               reported={"LFW": 99.68, "CFP-FP": 93.31, "AgeDB-30": 96.92, "IJB-B": 91.25, "IJB-C": 93.45}),
    Checkpoint("GhostFaceNetV1-1.3-1-ArcFace-MS1MV2", "GhostFaceNetV1-1.3-1", "GN_W1.3_S1_ArcFace_epoch46.h5", "v1.4",
               "ArcFace", "MS1MV2",
               reported={"LFW": 99.7667, "CFP-FP": 95.64, "AgeDB-30": 97.58, "IJB-B": 92.19, "IJB-C": 94.06}),
    Checkpoint("GhostFaceNetV1-1.3-2-ArcFace-MS1MV2", "GhostFaceNetV1-1.3-2", "GN_W1.3_S2_ArcFace_epoch48.h5", "v1.5",
               "ArcFace", "MS1MV2",
               reported={"LFW": 99.65, "CFP-FP": 91.51, "AgeDB-30": 96.18, "IJB-B": 90.53, "IJB-C": 92.66}),
    Checkpoint("GhostFaceNetV1-1.3-1-CosFace-MS1MV2", "GhostFaceNetV1-1.3-1", "epoch17.h5", "v1.6",
               "CosFace", "MS1MV2", reported={"LFW": 99.7167, "CFP-FP": 94.7429, "AgeDB-30": 97.1833}),
    Checkpoint("GhostFaceNetV1-1.3-2-SubCenterArcFace-MS1MV2", "GhostFaceNetV1-1.3-2", "epoch17.h5", "v1.7",
               "Sub-center ArcFace", "MS1MV2", reported={"LFW": 99.633, "CFP-FP": 90.73, "AgeDB-30": 95.6}),
)}

# The checkpoint `load_pretrained("<registry model name>")` picks: the best reported one.
DEFAULT_FOR_MODEL = {
    "ghostfacenetv1-0.5-2": "ghostfacenetv1-0.5-2-arcface-ms1mv2",
    "ghostfacenetv1-1-2": "ghostfacenetv1-1-2-arcface-ms1mv2",
    "ghostfacenetv1-1.3-1": "ghostfacenetv1-1.3-1-arcface-ms1mv3",
    "ghostfacenetv1-1.3-2": "ghostfacenetv1-1.3-2-arcface-ms1mv3",
}


def list_pretrained() -> List[str]:
    """Names of the released checkpoints.

    Example:
        >>> "GhostFaceNetV1-1.3-1-ArcFace-MS1MV3" in list_pretrained()
        True
    """
    return [checkpoint.name for checkpoint in CHECKPOINTS.values()]


def get_checkpoint(name: str) -> Checkpoint:
    """A checkpoint by its name, or the default checkpoint of a registry model name (case-insensitive).

    Example:
        >>> get_checkpoint("GhostFaceNetV1-0.5-2").filename
        'GN_W0.5_S2_ArcFace_epoch16.h5'
    """
    key = canonical_name(name)
    key = DEFAULT_FOR_MODEL.get(key, key)
    if key not in CHECKPOINTS:
        raise ModelNameError(f"no released checkpoint named {name!r}; known: {', '.join(list_pretrained())}")
    return CHECKPOINTS[key]


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
        >>> model.output_shape
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
    temporary = converted + ".partial.keras"
    model.save(temporary)
    os.replace(temporary, converted)
    log.info("converted %s -> %s", source, converted)
    return model
