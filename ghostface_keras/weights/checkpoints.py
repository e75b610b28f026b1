"""The one table of released checkpoints: where each is, what it scored, its threshold, how to recognize it.

A checkpoint's identity travels with its weights, not with a file name: `signature_of` turns the raw
embeddings of two fixed probe images into a short signature, the same (cosine > `SIGNATURE_MATCH`) for the
official `.h5`, its `.keras` conversion and its SavedModel / TFLite (fp32, fp16, int8) / ONNX exports, so all
of them get the checkpoint's verification threshold. This module is data plus numpy: it imports nothing
else of the library, so every layer can use it.

Example:
    >>> get_checkpoint("GhostFaceNetV1-0.5-2").threshold
    0.21
    >>> checkpoint_threshold(None)     # a model of your own: the fallback operating point
    0.3
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence

import numpy as np

RELEASES = "https://github.com/HamadYA/GhostFaceNets/releases/download"

# For models without a measured threshold (your own training runs, checkpoints not measured here): the
# usual operating point of ArcFace-trained 512-d models. Measure your own with `ghostface-eval`.
FALLBACK_THRESHOLD = 0.30
# Cosine between signatures above which a model is taken to be a known checkpoint. Signatures of different
# weights are near-orthogonal (64 random directions: cosine ~ N(0, 0.125)); int8 exports of the same
# weights stay above 0.97.
SIGNATURE_MATCH = 0.9
SIGNATURE_SIZE = 64
# files the one loader reads (a SavedModel is a folder): a missing path with one of these is a missing file
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite", ".onnx")


def canonical_name(name: str) -> str:
    """Case-folded name with widths normalized ("1.0" -> "1"), so equivalent spellings match.

    Example:
        >>> canonical_name("GhostFaceNetV1-1.0-2")
        'ghostfacenetv1-1-2'
    """
    key = name.strip().lower()
    return re.sub(r"-(\d+)\.0(?=-|$)", r"-\1", key)


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint.

    `model` is the registry name of the architecture it converts to; `reported` are the official README's
    accuracies in % (IJB at TAR@FAR=1e-4); `gdc_bias` says whether the file's GDC_conv has a bias (the
    registry builds the model that way); `threshold` is the measured cosine verification threshold (None:
    not measured, `FALLBACK_THRESHOLD` applies); `signature` identifies the weights in any file format
    (see `signature_of`)."""

    name: str
    model: str
    filename: str
    release: str
    loss: str
    training_set: str
    sha256: str | None = None
    reported: Mapping[str, float] = field(default_factory=dict)
    gdc_bias: bool = False
    threshold: float | None = None
    signature: tuple[float, ...] = ()
    notes: str = ""

    @property
    def url(self) -> str:
        return f"{RELEASES}/{self.release}/{self.filename}"


CHECKPOINTS: dict[str, Checkpoint] = {c.name.lower(): c for c in (
    Checkpoint("GhostFaceNetV1-0.5-2-ArcFace-MS1MV2", "GhostFaceNetV1-0.5-2", "GN_W0.5_S2_ArcFace_epoch16.h5", "v1.0",
               "ArcFace", "MS1MV2", sha256="2beca52a2aeadfa81ed5ebab35e2a58f7c79e3c1ffda80a31511861870151715",
               reported={"LFW": 99.783, "CFP-FP": 83.4, "AgeDB-30": 91.13},
               # best-accuracy threshold on the 600 CelebA val pairs (MTCNN + ArcFace alignment, flip TTA),
               # rounded; how it was chosen: docs/inference.md, "Choosing the threshold"
               threshold=0.21,
               signature=(0.2513, 0.0313, 0.2557, -0.026, 0.0132, 0.0145, -0.0672, 0.1084, 0.122,
               -0.1647, 0.0826, 0.0692, -0.0398, 0.03, 0.0864, 0.0668, -0.251, 0.0018, 0.0116,
               -0.1131, -0.0015, -0.1652, 0.1025, -0.0219, -0.1009, 0.0366, 0.08, -0.0122, 0.1639,
               -0.2146, 0.0567, -0.0017, -0.049, 0.0621, -0.0847, -0.0478, -0.0443, 0.0442, 0.0644,
               -0.0776, -0.2856, 0.1989, 0.1718, -0.0188, 0.057, -0.1708, -0.118, -0.2699, 0.0021,
               0.1124, 0.0798, 0.2906, -0.0372, -0.0546, 0.1905, 0.1877, -0.2362, -0.0621, -0.0247,
               -0.0544, -0.0486, -0.0913, 0.126, -0.0872),
               notes="hash of a byte-identical third-party copy; README's LFW figure is likely a typo"),
    Checkpoint("GhostFaceNetV1-1-2-ArcFace-MS1MV2", "GhostFaceNetV1-1-2", "GN_W1_S2_ArcFace_epoch18.h5", "v1.1",
               "ArcFace", "MS1MV2", reported={"LFW": 99.383, "CFP-FP": 88.81, "AgeDB-30": 94.85}),
    Checkpoint("GhostFaceNetV1-1.3-1-ArcFace-MS1MV3", "GhostFaceNetV1-1.3-1", "GhostFaceNet_W1.3_S1_ArcFace.h5", "v1.2",
               "ArcFace", "MS1MV3",
               reported={"LFW": 99.73, "CFP-FP": 96.83, "AgeDB-30": 98.00, "IJB-B": 93.12, "IJB-C": 94.94},
               gdc_bias=True,
               notes="the checkpoint deepface uses"),
    Checkpoint("GhostFaceNetV1-1.3-2-ArcFace-MS1MV3", "GhostFaceNetV1-1.3-2", "GhostFaceNet_W1.3_S2_ArcFace.h5", "v1.3",
               "ArcFace", "MS1MV3",
               reported={"LFW": 99.68, "CFP-FP": 93.31, "AgeDB-30": 96.92, "IJB-B": 91.25, "IJB-C": 93.45},
               gdc_bias=True),
    Checkpoint("GhostFaceNetV1-1.3-1-ArcFace-MS1MV2", "GhostFaceNetV1-1.3-1", "GN_W1.3_S1_ArcFace_epoch46.h5", "v1.4",
               "ArcFace", "MS1MV2",
               reported={"LFW": 99.7667, "CFP-FP": 95.64, "AgeDB-30": 97.58, "IJB-B": 92.19, "IJB-C": 94.06},
               gdc_bias=True),
    Checkpoint("GhostFaceNetV1-1.3-2-ArcFace-MS1MV2", "GhostFaceNetV1-1.3-2", "GN_W1.3_S2_ArcFace_epoch48.h5", "v1.5",
               "ArcFace", "MS1MV2",
               reported={"LFW": 99.65, "CFP-FP": 91.51, "AgeDB-30": 96.18, "IJB-B": 90.53, "IJB-C": 92.66},
               gdc_bias=True),
    Checkpoint("GhostFaceNetV1-1.3-1-CosFace-MS1MV2", "GhostFaceNetV1-1.3-1", "epoch17.h5", "v1.6",
               "CosFace", "MS1MV2", reported={"LFW": 99.7167, "CFP-FP": 94.7429, "AgeDB-30": 97.1833},
               gdc_bias=True),
    Checkpoint("GhostFaceNetV1-1.3-2-SubCenterArcFace-MS1MV2", "GhostFaceNetV1-1.3-2", "epoch17.h5", "v1.7",
               "Sub-center ArcFace", "MS1MV2", reported={"LFW": 99.633, "CFP-FP": 90.73, "AgeDB-30": 95.6},
               gdc_bias=True),
)}

# Width-1.3 files come from GhostFaceNets_with_Bias.py, the only official builder that produces width 1.3,
# which always adds the GDC_conv bias (deepface's loader for the W1.3-S1 release builds it with a bias too);
# the W0.5 and W1 files have none (read from the files).

# What the official README reports for variants it released no weights for (ArcFace, MS1MV2): facts about
# architectures, kept beside the released ones so that every reported figure has this one home.
REPORTED_WITHOUT_WEIGHTS: dict[str, Mapping[str, float]] = {
    "ghostfacenetv1-1.2-2": {"LFW": 99.53, "CFP-FP": 90.13, "AgeDB-30": 95.62},
    "ghostfacenetv1-1.4-2": {"LFW": 99.6167, "CFP-FP": 90.8857, "AgeDB-30": 95.78},
    "ghostfacenetv1-2-1": {"LFW": 99.77, "CFP-FP": 96.56, "AgeDB-30": 97.47},
    "ghostfacenetv2-1-2": {"LFW": 99.65, "CFP-FP": 92.9, "AgeDB-30": 96.212},
    "ghostfacenetv2-1.1-2": {"LFW": 99.6, "CFP-FP": 91.814, "AgeDB-30": 95.683},
    "ghostfacenetv2-1.2-2": {"LFW": 99.633, "CFP-FP": 92.686, "AgeDB-30": 95.9},
    "ghostfacenetv2-1.3-2": {"LFW": 99.717, "CFP-FP": 93.071, "AgeDB-30": 96.55, "IJB-B": 91.7624},
    "ghostfacenetv2-1.4-2": {"LFW": 99.683, "CFP-FP": 91.986, "AgeDB-30": 95.983},
    "ghostfacenetv2-1.5-2": {"LFW": 99.7, "CFP-FP": 93.9, "AgeDB-30": 96.483},
}
REPORTED_SOURCE = "official GhostFaceNets README, {loss}, {training_set}"

# The checkpoint a registry model name stands for (`load_pretrained("GhostFaceNetV1-1.3-1")`): the best one.
DEFAULT_FOR_MODEL = {
    "ghostfacenetv1-0.5-2": "ghostfacenetv1-0.5-2-arcface-ms1mv2",
    "ghostfacenetv1-1-2": "ghostfacenetv1-1-2-arcface-ms1mv2",
    "ghostfacenetv1-1.3-1": "ghostfacenetv1-1.3-1-arcface-ms1mv3",
    "ghostfacenetv1-1.3-2": "ghostfacenetv1-1.3-2-arcface-ms1mv3",
}


def default_checkpoint(model: str) -> Checkpoint | None:
    """The released checkpoint a registry model name stands for (its best one), or None when the model has
    no released weights.

    Example:
        >>> default_checkpoint("GhostFaceNetV1-1.3-2").training_set
        'MS1MV3'
        >>> default_checkpoint("GhostFaceNetV2-1-2") is None
        True
    """
    key = DEFAULT_FOR_MODEL.get(canonical_name(model))
    return CHECKPOINTS[key] if key else None


def reported_accuracy(model: str) -> tuple[Mapping[str, float], str]:
    """What the official README reports for a registry model, and where from: the figures of its default
    checkpoint when it has released weights (so they describe the weights `pretrained=True` loads), else the
    README's figures for the architecture; `({}, "")` when nothing is reported.

    Example:
        >>> accuracy, source = reported_accuracy("GhostFaceNetV1-1.3-2")
        >>> accuracy["LFW"], source
        (99.68, 'official GhostFaceNets README, ArcFace, MS1MV3')
    """
    checkpoint = default_checkpoint(model)
    if checkpoint is not None:
        return checkpoint.reported, REPORTED_SOURCE.format(loss=checkpoint.loss, training_set=checkpoint.training_set)
    reported = REPORTED_WITHOUT_WEIGHTS.get(canonical_name(model), {})
    return reported, REPORTED_SOURCE.format(loss="ArcFace", training_set="MS1MV2") if reported else ""


def list_pretrained() -> list[str]:
    """Names of the released checkpoints.

    Example:
        >>> "GhostFaceNetV1-1.3-1-ArcFace-MS1MV3" in list_pretrained()
        True
    """
    return [checkpoint.name for checkpoint in CHECKPOINTS.values()]


def find_checkpoint(name: str) -> Checkpoint | None:
    """The checkpoint a name stands for, or None: a checkpoint name, a registry model name with a release
    (its best checkpoint), or an official release file name (unique ones only: two releases are `epoch17.h5`).

    Example:
        >>> find_checkpoint("GN_W0.5_S2_ArcFace_epoch16.h5").name
        'GhostFaceNetV1-0.5-2-ArcFace-MS1MV2'
        >>> find_checkpoint("my_model") is None
        True
    """
    key = canonical_name(name)
    key = DEFAULT_FOR_MODEL.get(key, key)
    if key in CHECKPOINTS:
        return CHECKPOINTS[key]
    by_file = [c for c in CHECKPOINTS.values() if canonical_name(c.filename) in (key, key + ".h5")]
    return by_file[0] if len(by_file) == 1 else None


def get_checkpoint(name: str) -> Checkpoint:
    """Like `find_checkpoint`, but an unknown name raises `ModelNameError` listing the known ones.

    Example:
        >>> get_checkpoint("GhostFaceNetV1-0.5-2").filename
        'GN_W0.5_S2_ArcFace_epoch16.h5'
    """
    checkpoint = find_checkpoint(name)
    if checkpoint is None:
        from ghostface_keras.core.errors import ModelNameError

        raise ModelNameError(f"no released checkpoint named {name!r}; known: {', '.join(list_pretrained())}")
    return checkpoint


def checkpoint_threshold(checkpoint: Checkpoint | None) -> float:
    """The verification threshold of a checkpoint: measured, else `FALLBACK_THRESHOLD`.

    Example:
        >>> checkpoint_threshold(get_checkpoint("GhostFaceNetV1-1.3-1"))
        0.3
    """
    if checkpoint is not None and checkpoint.threshold is not None:
        return checkpoint.threshold
    return FALLBACK_THRESHOLD


# --------------------------------------------------------------------------------------------------
# Identity from the weights, in any file format
# --------------------------------------------------------------------------------------------------
def probe_images(size: int = 112) -> np.ndarray:
    """The two fixed uint8 RGB images (2, size, size, 3) whose embeddings identify a checkpoint.

    Coarse random blocks (exact integers, the same on every platform), not noise: every network maps them
    to stable, distinct embeddings.

    Example:
        >>> probe_images().shape, probe_images().dtype.name
        ((2, 112, 112, 3), 'uint8')
    """
    blocks = np.random.default_rng(112).integers(0, 256, size=(2, 7, 7, 3), dtype=np.uint8)
    cell = -(-size // 7)
    return np.repeat(np.repeat(blocks, cell, axis=1), cell, axis=2)[:, :size, :size]


def signature_of(raw_embeddings: np.ndarray) -> np.ndarray:
    """A unit `SIGNATURE_SIZE` vector from the raw embeddings of `probe_images()` (no flip): the rows are
    L2-normalized, concatenated and projected on fixed random directions.

    Example:
        >>> signature = signature_of(np.ones((2, 512), np.float32))
        >>> signature.shape, round(float(np.linalg.norm(signature)), 6)
        ((64,), 1.0)
    """
    rows = np.asarray(raw_embeddings, dtype=np.float64)
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    flat = rows.reshape(-1)
    directions = np.random.default_rng(len(flat)).standard_normal((len(flat), SIGNATURE_SIZE))
    projected = flat @ directions
    return projected / max(float(np.linalg.norm(projected)), 1e-12)


def match_signature(signature: np.ndarray) -> Checkpoint | None:
    """The released checkpoint whose recorded signature this one matches, or None.

    Example:
        >>> match_signature(np.asarray(get_checkpoint("GhostFaceNetV1-0.5-2").signature)).name
        'GhostFaceNetV1-0.5-2-ArcFace-MS1MV2'
    """
    signature = np.asarray(signature, dtype=np.float64)
    best, best_cosine = None, SIGNATURE_MATCH
    for checkpoint in CHECKPOINTS.values():
        if len(checkpoint.signature) != len(signature):
            continue
        reference = np.asarray(checkpoint.signature, dtype=np.float64)
        cosine = float(signature @ reference / max(np.linalg.norm(reference) * np.linalg.norm(signature), 1e-12))
        if cosine > best_cosine:
            best, best_cosine = checkpoint, cosine
    return best


def rounded_signature(signature: Sequence[float]) -> tuple[float, ...]:
    """The signature as it is written in `CHECKPOINTS` (4 decimals)."""
    return tuple(round(float(value), 4) for value in signature)


def check_model_source(source: str | os.PathLike) -> None:
    """Refuse, in one line and without loading anything, a model argument that cannot be loaded: a missing
    file, or a name that is neither a file nor a released checkpoint. Commands call it before slow work.

    Example:
        >>> check_model_source("GhostFaceNetV1-0.5-2")      # a released checkpoint name: fine
        >>> check_model_source("runs/missing/model.keras")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.ModelLoadError: runs/missing/model.keras: model file not found
    """
    from ghostface_keras.core.errors import ModelLoadError

    source = str(source)
    if os.path.exists(source):
        if not os.path.isdir(source):  # a SavedModel is a folder; a FIFO or a device would hang the loader
            from ghostface_keras.core.errors import DataError
            from ghostface_keras.core.files import check_regular_file

            try:
                check_regular_file(source, "model file")
            except DataError as error:
                raise ModelLoadError(str(error)) from None
        return
    if os.path.splitext(source)[1].lower() in MODEL_SUFFIXES or os.sep in source or "/" in source:
        raise ModelLoadError(f"{source}: model file not found")
    if find_checkpoint(source) is None:
        raise ModelLoadError(f"{source}: no such model file, and no released checkpoint has that name "
                             f"(known: {', '.join(list_pretrained())})")
