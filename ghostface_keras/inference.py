"""Photos in, decisions out: `FaceEmbedder` (detect -> align -> embed -> verify / identify) and the `ghostface` CLI.

Three lines from photos to a decision:

    >>> from ghostface_keras.inference import FaceEmbedder
    >>> embedder = FaceEmbedder("GN_W0.5_S2_ArcFace_epoch16.h5")      # or a Keras model, .keras or .tflite
    >>> similarity, same = embedder.verify("alice_1.jpg", "alice_2.jpg")

The model sees exactly what it saw in training: the largest face, aligned to the ArcFace 112x112
template (`ghostface_keras.align`), RGB, normalized by `normalize_images`. By default the embedding is
the L2-normalized sum of the embeddings of the crop and its mirror image (`flip=True`, as in the
official evaluation); the similarity of two faces is the cosine (dot product of unit vectors).

Command line (console script `ghostface`):

    ghostface verify a.jpg b.jpg --model model.keras
    ghostface embed photos/*.jpg --model model.tflite --output embeddings.npy
    ghostface identify probe.jpg --gallery known_people/ --model model.keras
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ghostface_keras.align import (
    DetectedFace,
    FaceDetector,
    ImageInput,
    align_face,
    describe_image,
    get_detector,
    list_images,
    load_rgb_image,
)
from ghostface_keras.errors import DataError, GhostFaceError, NoFaceError
from ghostface_keras.export.runtime import TFLiteEmbedder
from ghostface_keras.preprocessing import normalize_images

logger = logging.getLogger(__name__)

# Cosine-similarity thresholds for `verify`, per registry model name. How each was chosen is in
# docs/inference.md ("Choosing the threshold"): the best-accuracy threshold on the 600 pairs of
# shared/data/celeba_aligned112/val_pairs.bin (MTCNN + ArcFace alignment, flip TTA), rounded.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "GhostFaceNetV1-0.5-2": 0.21,
}
# For models without a measured threshold (your own training runs, other registry variants): the
# usual operating point of ArcFace-trained 512-d models. Measure your own with `eval.py`.
FALLBACK_THRESHOLD = 0.30
# Official release file names / checkpoint names -> registry names, so a released checkpoint gets
# its model's threshold (completed from `ghostface_keras.pretrained` when it is importable).
CHECKPOINT_ALIASES: dict[str, str] = {
    "GN_W0.5_S2_ArcFace_epoch16": "GhostFaceNetV1-0.5-2",
    "GhostFaceNetV1-0.5-2-ArcFace-MS1MV2": "GhostFaceNetV1-0.5-2",
}


# --------------------------------------------------------------------------------------------------
# Model runners: Keras model or TFLite file behind one call signature
# --------------------------------------------------------------------------------------------------
class KerasRunner:
    """Runs a Keras embedding model on normalized float32 batches (N, H, W, 3) -> (N, D)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_size = int(model.input_shape[1] or 112)
        self.name = getattr(model, "name", "") or ""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import keras

        with warnings.catch_warnings():
            # models saved with a one-element input list warn that a bare tensor "doesn't match"
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            outputs = self.model(batch, training=False)
        if isinstance(outputs, (list, tuple)):  # a model exported with extra outputs: embedding first
            outputs = outputs[0]
        return np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float32).reshape(len(batch), -1)


# `.tflite` files run through the one runner that export and evaluation use too
TFLiteRunner = TFLiteEmbedder


def load_embedding_runner(model_or_path: Any) -> KerasRunner | TFLiteRunner:
    """A Keras model, a `.keras` / `.h5` file (ours or an official release), a `.tflite` file, or the
    name of a released checkpoint (`ghostface_keras.pretrained`, downloaded once) -> runner.

    Example:
        >>> runner = load_embedding_runner("model.tflite")
        >>> runner(np.zeros((2, 112, 112, 3), np.float32)).shape
        (2, 512)
    """
    if isinstance(model_or_path, (KerasRunner, TFLiteRunner)):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        if not hasattr(model_or_path, "input_shape"):
            raise GhostFaceError(f"model must be a Keras model or a file path, got {type(model_or_path).__name__}")
        return KerasRunner(model_or_path)
    path = Path(model_or_path)
    if not path.is_file() and path.suffix.lower() not in MODEL_SUFFIXES and len(path.parts) == 1:
        return _pretrained_runner(str(model_or_path))
    if not path.is_file():
        raise DataError(f"{path}: model file not found (expected a .keras, .h5 or .tflite file)")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return TFLiteRunner(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        runner = KerasRunner(_load_keras_file(path))
        runner.name = path.stem
        return runner
    raise DataError(f"{path}: unsupported model file type {suffix!r} (expected .keras, .h5 or .tflite)")


MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite")


def _pretrained_runner(name: str) -> KerasRunner:
    # a bare name such as "GhostFaceNetV1-0.5-2": the released weights, downloaded once and cached
    from ghostface_keras.pretrained import get_checkpoint, load_pretrained

    checkpoint = get_checkpoint(name)  # ModelNameError (a GhostFaceError) lists the known names
    runner = KerasRunner(load_pretrained(checkpoint.name))
    runner.name = checkpoint.model
    return runner


def _load_keras_file(path: Path) -> Any:
    import keras

    if path.suffix.lower() in (".h5", ".hdf5") and _is_keras2_h5(path):
        from ghostface_keras.convert import load_official  # official releases are Keras-2 files

        return load_official(str(path))
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # Keras raises many types for a bad file; the user needs one message
        raise DataError(f"{path}: cannot load Keras model ({type(error).__name__}: {error})") from None


def _is_keras2_h5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version", b"")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 model file ({error})") from None
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.startswith("2.")


def default_threshold(model_name: str | None) -> float:
    """The documented cosine threshold for a registry model name (or an official checkpoint stem).

    Example:
        >>> default_threshold("GN_W0.5_S2_ArcFace_epoch16")
        0.21
    """
    name = _known_aliases().get(model_name or "", model_name or "")
    if name in DEFAULT_THRESHOLDS:
        return DEFAULT_THRESHOLDS[name]
    logger.info("no measured threshold for model %r; using the fallback %.2f", model_name, FALLBACK_THRESHOLD)
    return FALLBACK_THRESHOLD


def _known_aliases() -> dict[str, str]:
    aliases = dict(CHECKPOINT_ALIASES)
    try:
        from ghostface_keras.pretrained import CHECKPOINTS
    except ImportError:
        return aliases
    stems = [Path(checkpoint.filename).stem for checkpoint in CHECKPOINTS.values()]
    for checkpoint in CHECKPOINTS.values():
        aliases.setdefault(checkpoint.name, checkpoint.model)
        stem = Path(checkpoint.filename).stem
        if stems.count(stem) == 1:  # "epoch17.h5" names two different checkpoints: no alias
            aliases.setdefault(stem, checkpoint.model)
    return aliases


# --------------------------------------------------------------------------------------------------
# The embedder
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignedFace:
    """A detected face and its aligned crop ((size, size, 3) uint8 RGB)."""

    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    score: float


@dataclass(frozen=True)
class Match:
    """One gallery identity ranked by `identify`: its best-matching image and that cosine similarity."""

    name: str
    similarity: float
    path: str
    same: bool


@dataclass
class Gallery:
    """Known faces: one unit embedding per gallery image, with its identity name and source path."""

    names: list[str]
    embeddings: np.ndarray
    paths: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a `.npz` file (atomically; no pickles, so it is safe to load)."""
        target = Path(path)
        temporary = target.with_name(f".{target.stem}.tmp.npz")
        np.savez(temporary, names=np.array(self.names, dtype=str), embeddings=self.embeddings,
                 paths=np.array(self.paths, dtype=str))
        os.replace(temporary, target)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Gallery":
        """Read a gallery written by `save`.

        Example:
            >>> Gallery.load("known.npz").names[:2]
            ['alice', 'alice']
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["names"].tolist(), data["embeddings"].astype(np.float32), data["paths"].tolist())
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"{path}: not a gallery .npz file ({error})") from None


class FaceEmbedder:
    """Detect, align and embed faces; verify pairs; identify against a gallery.

    Args:
        model_or_path: a Keras embedding model, or a `.keras`, `.h5` (ours or an official release)
            or `.tflite` file.
        detector: "mtcnn" (default), any object with `.detect(image) -> list[DetectedFace]`, or
            None / "none" when inputs are already aligned crops (resized to the model input if needed).
        flip: add the embedding of the mirrored crop before normalizing (official evaluation TTA).
        threshold: cosine threshold for `verify`; default: `default_threshold(model_name)`.
        model_name: registry name used to pick the threshold (default: the model's name or file stem).
        batch_size: crops per model call.

    Example:
        >>> embedder = FaceEmbedder("model.tflite")
        >>> embedder.embed("photo.jpg").shape
        (512,)
    """

    def __init__(self, model_or_path: Any, detector: str | FaceDetector | None = "mtcnn", flip: bool = True,
                 threshold: float | None = None, model_name: str | None = None, batch_size: int = 32) -> None:
        self.runner = load_embedding_runner(model_or_path)
        self.detector = get_detector(detector)
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.model_name = model_name or self.runner.name
        self.threshold = float(threshold) if threshold is not None else default_threshold(self.model_name)

    @property
    def input_size(self) -> int:
        """Side of the square crops the model takes (112 for every registry model)."""
        return self.runner.input_size

    def detect(self, image: ImageInput) -> list[DetectedFace]:
        """Faces in a photo, largest first (with detector=None: the whole image as one face)."""
        rgb = load_rgb_image(image)
        if self.detector is None:
            height, width = rgb.shape[:2]
            box = np.array([0, 0, width, height], np.float32)
            return [DetectedFace(box=box, landmarks=np.full((5, 2), np.nan, np.float32), score=1.0)]
        return sorted(self.detector.detect(rgb), key=lambda face: -face.area)

    def align(self, image: ImageInput) -> list[AlignedFace]:
        """Every face of a photo, aligned to the model's input size, largest first."""
        rgb = load_rgb_image(image)
        if self.detector is None:
            return [AlignedFace(self._resize_precropped(rgb), *self._whole_image_face(rgb))]
        return [AlignedFace(align_face(rgb, face.landmarks, self.input_size), face.box, face.landmarks, face.score)
                for face in self.detect(rgb)]

    def embed(self, image: ImageInput) -> np.ndarray:
        """The unit-length embedding of the largest face in a photo.

        Raises:
            NoFaceError: no face was found (the message names the file).
            DataError: the file is missing or not an image.
        """
        return self.embed_aligned(self._largest_crop(image)[None])[0]

    def embed_batch(self, images: Sequence[ImageInput], skip_missing: bool = False,
                    progress: bool = False) -> np.ndarray:
        """Embeddings of the largest face of each photo, (N, D) float32, rows in input order.

        With `skip_missing=True` a photo without a face gives a row of NaN instead of raising
        `NoFaceError` (so rows stay aligned with the inputs).
        """
        crops, missing = [], []
        bar = _progress_bar(len(images)) if progress else None
        for index, image in enumerate(images):
            try:
                crops.append(self._largest_crop(image))
            except NoFaceError:
                if not skip_missing:
                    raise
                missing.append(index)
            if bar is not None:
                bar.update(index + 1)
        found = self.embed_aligned(np.stack(crops)) if crops else np.zeros((0, 0), np.float32)
        dimension = found.shape[1] if crops else self._embedding_size()
        result = np.full((len(images), dimension), np.nan, np.float32)
        result[np.setdiff1d(np.arange(len(images)), missing)] = found
        return result

    def embed_aligned(self, crops: np.ndarray) -> np.ndarray:
        """Unit embeddings of already aligned uint8 RGB crops (N, size, size, 3) -> (N, D) float32.

        Example:
            >>> embedder.embed_aligned(np.zeros((2, 112, 112, 3), np.uint8)).shape
            (2, 512)
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise DataError(f"aligned crops have shape {crops.shape}: expected "
                            f"(N, {self.input_size}, {self.input_size}, 3) uint8 RGB")
        outputs = []
        for start in range(0, len(crops), self.batch_size):
            batch = normalize_images(crops[start:start + self.batch_size])
            embedding = self.runner(batch)
            if self.flip:
                embedding = embedding + self.runner(np.ascontiguousarray(batch[:, :, ::-1]))
            outputs.append(embedding)
        embeddings = np.concatenate(outputs, axis=0) if outputs else np.zeros((0, 0), np.float32)
        return _l2_normalize(embeddings)

    def verify(self, image_a: ImageInput, image_b: ImageInput, threshold: float | None = None) -> tuple[float, bool]:
        """Cosine similarity of the largest faces of two photos and whether it reaches the threshold.

        Example:
            >>> embedder.verify("alice_1.jpg", "alice_2.jpg")
            (0.71, True)
        """
        threshold = self.threshold if threshold is None else float(threshold)
        similarity = float(np.dot(self.embed(image_a), self.embed(image_b)))
        return similarity, bool(similarity >= threshold)

    def build_gallery(self, source: str | os.PathLike | Mapping[str, Iterable[ImageInput]],
                      progress: bool = False) -> Gallery:
        """Embed known people: a folder (`name/*.jpg` sub-folders, or flat files named after the person)
        or a mapping name -> photos. Photos without a face are skipped with a warning.

        Example:
            >>> gallery = embedder.build_gallery("known_people/")
            >>> sorted(set(gallery.names))
            ['alice', 'bob']
        """
        entries = _gallery_entries(source)
        embeddings = self.embed_batch([image for _, image in entries], skip_missing=True, progress=progress)
        found = ~np.isnan(embeddings).any(axis=1)
        for (name, image), ok in zip(entries, found):
            if not ok:
                logger.warning("gallery: no face in %s (identity %s), skipped", describe_image(image), name)
        if not found.any():
            raise NoFaceError(f"gallery {describe_image(source)}: no face found in any of its {len(entries)} photos")
        kept = [entry for entry, ok in zip(entries, found) if ok]
        return Gallery([name for name, _ in kept], embeddings[found], [describe_image(image) for _, image in kept])

    def identify(self, probe: ImageInput, gallery: Gallery | str | os.PathLike | Mapping[str, Iterable[ImageInput]],
                 top_k: int = 5, threshold: float | None = None) -> list[Match]:
        """Rank gallery identities by the similarity of their closest photo to the probe's largest face.

        Example:
            >>> best = embedder.identify("someone.jpg", "known_people/")[0]
            >>> best.name, best.same
            ('alice', True)
        """
        threshold = self.threshold if threshold is None else float(threshold)
        if not isinstance(gallery, Gallery):
            gallery = self.build_gallery(gallery)
        similarities = gallery.embeddings @ self.embed(probe)
        best_per_name: dict[str, int] = {}
        for index, name in enumerate(gallery.names):
            if name not in best_per_name or similarities[index] > similarities[best_per_name[name]]:
                best_per_name[name] = index
        ranked = sorted(best_per_name.items(), key=lambda item: -similarities[item[1]])[:max(int(top_k), 1)]
        return [Match(name, float(similarities[index]), gallery.paths[index] if gallery.paths else "",
                      bool(similarities[index] >= threshold)) for name, index in ranked]

    # -- helpers -----------------------------------------------------------------------------------
    def _largest_crop(self, image: ImageInput) -> np.ndarray:
        faces = self.align(image)
        if not faces:
            raise NoFaceError(f"{describe_image(image)}: no face found")
        return faces[0].image

    def _resize_precropped(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[:2] == (self.input_size, self.input_size):
            return rgb
        resized = Image.fromarray(rgb).resize((self.input_size, self.input_size), Image.BILINEAR)
        return np.asarray(resized)

    @staticmethod
    def _whole_image_face(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        height, width = rgb.shape[:2]
        return np.array([0, 0, width, height], np.float32), np.full((5, 2), np.nan, np.float32), 1.0

    def _embedding_size(self) -> int:
        probe = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
        return int(self.runner(normalize_images(probe)).shape[1])


def _l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def _progress_bar(total: int) -> Any:
    import keras

    return keras.utils.Progbar(total, unit_name="photo")


def _gallery_entries(source: Any) -> list[tuple[str, ImageInput]]:
    if isinstance(source, Mapping):
        return [(str(name), image) for name, images in source.items() for image in images]
    root = Path(source)
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: gallery folder has no image files")
    # name/*.jpg -> identity "name"; flat files -> identity is the file name without extension
    return [(path.parent.name if path.parent != root else path.stem, path) for path in files]


# --------------------------------------------------------------------------------------------------
# The `ghostface` command line
# --------------------------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghostface", description="Face verification, embedding and "
                                     "identification from photos with a GhostFaceNets / MobileFaceNet model.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="are two photos the same person?")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    embed = commands.add_parser("embed", help="write unit embeddings of photos to a .npy file")
    embed.add_argument("images", nargs="+")
    embed.add_argument("--output", "-o", required=True, help="output .npy (N x D float32); the file order is "
                       "written beside it as <output>.txt")
    embed.add_argument("--skip-missing", action="store_true", help="NaN rows for photos without a face "
                       "instead of stopping")
    identify = commands.add_parser("identify", help="who is this? rank the people of a gallery folder")
    identify.add_argument("probe")
    identify.add_argument("--gallery", required=True, help="folder of name/*.jpg (or flat name.jpg) photos, "
                          "or a .npz written by --save-gallery")
    identify.add_argument("--top-k", type=int, default=5)
    identify.add_argument("--save-gallery", help="also save the gallery embeddings to this .npz for reuse")
    for command in (verify, embed, identify):
        command.add_argument("--model", "-m", required=True, help=".keras, .h5 (ours or official), .tflite, or a "
                             "released checkpoint name such as GhostFaceNetV1-0.5-2")
        command.add_argument("--detector", default="mtcnn", help="'mtcnn' (default) or 'none' for aligned crops")
        command.add_argument("--no-flip", action="store_true", help="skip the mirrored-crop embedding")
        command.add_argument("--model-name", help="registry name used to pick the default threshold")
        command.add_argument("--verbose", "-v", action="store_true")
    for command in (verify, identify):
        command.add_argument("--threshold", type=float, help="cosine threshold (default: per model, see docs)")
    return parser


def _run_command(args: argparse.Namespace) -> int:
    embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                            threshold=getattr(args, "threshold", None), model_name=args.model_name)
    if args.command == "verify":
        similarity, same = embedder.verify(args.image_a, args.image_b)
        verdict = "same person" if same else "different people"
        print(f"similarity {similarity:.4f}  threshold {embedder.threshold:.2f}  ->  {verdict}")
        return 0
    if args.command == "embed":
        embeddings = embedder.embed_batch(args.images, skip_missing=args.skip_missing, progress=len(args.images) > 1)
        _save_embeddings(Path(args.output), embeddings, args.images)
        missing = int(np.isnan(embeddings).any(axis=1).sum())
        print(f"wrote {len(embeddings)} x {embeddings.shape[1]} embeddings to {args.output}"
              + (f" ({missing} photos without a face are NaN rows)" if missing else ""))
        return 0
    gallery = (Gallery.load(args.gallery) if str(args.gallery).endswith(".npz")
               else embedder.build_gallery(args.gallery, progress=True))
    if args.save_gallery:
        gallery.save(args.save_gallery)
    for rank, match in enumerate(embedder.identify(args.probe, gallery, top_k=args.top_k), start=1):
        verdict = "match" if match.same else "below threshold"
        print(f"{rank}. {match.name}  similarity {match.similarity:.4f}  ({verdict}; {match.path})")
    return 0


def _save_embeddings(output: Path, embeddings: np.ndarray, images: Sequence[str]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, embeddings)
    os.replace(temporary, output)
    order_file = output.with_suffix(".txt")
    order_file.write_text("\n".join(str(image) for image in images) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ghostface` console script; returns the exit status.

    Example:
        >>> main(["verify", "a.jpg", "b.jpg", "--model", "model.keras"])
        similarity 0.7012  threshold 0.30  ->  same person
        0
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return _run_command(args)
    except GhostFaceError as error:
        print(f"ghostface: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ghostface: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
