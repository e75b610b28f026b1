"""Synthetic, procedurally drawn face-like identities, for demos and for tests that need many people fast.

These are NOT real faces. Each identity is a fixed set of geometry and colour parameters (face shape
and skin tone, hair colour and line, eye spacing/size/colour, brows, nose, mouth, moles, and the
discrete traits beard and glasses), drawn from
`numpy.random.default_rng((seed, identity))`, so identity k is the same person in every call and
disjoint identity ranges give disjoint people (train on 0..N-1, verify on N..N+M-1). Every image of an
identity adds nuisance: in-plane rotation (+-12 deg), scale (0.9-1.1), shift (+-5 px), expression
(mouth curve, eye opening), background colour, directional lighting, exposure, colour cast and
sensor noise. Images are 112x112 RGB, drawn with numpy at several hundred per second.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ghostface_keras.core.files import write_atomically


def _identity_parameters(seed: int, identity: int) -> dict:
    rng = np.random.default_rng((seed, identity, 0x5EED))
    skin = rng.uniform([90, 60, 40], [245, 205, 180])
    return {
        "face_rx": rng.uniform(0.52, 0.74),
        "face_ry": rng.uniform(0.70, 0.92),
        "chin": rng.uniform(-0.25, 0.25),  # narrows (+) or widens (-) the lower face
        "skin": skin,
        "hair": rng.uniform(0, 255, 3) * rng.uniform(0.2, 1.0),
        "hair_line": rng.uniform(-0.75, -0.35),
        "hair_tilt": rng.uniform(-0.35, 0.35),
        "hair_side": rng.uniform(0.0, 0.25),
        "eye_y": rng.uniform(-0.22, -0.05),
        "eye_dx": rng.uniform(0.20, 0.36),
        "eye_rx": rng.uniform(0.07, 0.13),
        "eye_ry": rng.uniform(0.035, 0.075),
        "iris": rng.uniform(0, 200, 3),
        "brow_gap": rng.uniform(0.07, 0.16),
        "brow_thick": rng.uniform(0.015, 0.045),
        "brow_tilt": rng.uniform(-0.4, 0.4),
        "brow_color": rng.uniform(0, 120, 3),
        "nose_len": rng.uniform(0.15, 0.32),
        "nose_w": rng.uniform(0.05, 0.12),
        "mouth_y": rng.uniform(0.32, 0.55),
        "mouth_w": rng.uniform(0.14, 0.32),
        "mouth_h": rng.uniform(0.02, 0.06),
        "lips": np.clip(skin * rng.uniform(0.45, 0.85) + rng.uniform([0, -30, -30], [80, 10, 10]), 0, 255),
        "moles": rng.uniform([-0.5, -0.4, 0.02], [0.5, 0.6, 0.045], (rng.integers(0, 4), 3)),
        # discrete traits multiply the number of clearly different people
        "beard": rng.uniform(0.05, 0.3) if rng.random() < 0.35 else None,  # its top, below the mouth line
        "glasses": (rng.uniform(0, 255, 3) * rng.uniform(0.1, 0.8), rng.uniform(0.012, 0.03)) if rng.random() < 0.35 else None,
    }


def _soft(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance (negative inside), anti-aliased over about one pixel."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _ellipse(u, v, cx, cy, rx, ry):
    return (np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def _paint(canvas, coverage, colour):
    """Blend `colour` over `canvas` by `coverage`, touching only the bounding box of the shape (speed)."""
    rows = np.flatnonzero(coverage.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(coverage.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    region = canvas[box]
    region += coverage[box][..., None] * (np.asarray(colour, dtype=np.float32) - region)


def render_face(params: dict, rng: np.random.Generator, image_size: int = 112) -> np.ndarray:
    """Draw one image of the identity `params` with nuisance drawn from `rng` (uint8, HxWx3)."""
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = float(rng.uniform(0.9, 1.1) * image_size / 2.4)  # pixels per canonical unit: the face fills ~75%
    shift = rng.uniform(-5, 5, 2)
    coords = np.arange(image_size, dtype=np.float32) - (image_size - 1) / 2
    x, y = np.meshgrid(coords - np.float32(shift[0]), coords - np.float32(shift[1]))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))  # python floats keep the grids float32
    u = (cos * x + sin * y) / scale
    v = (-sin * x + cos * y) / scale
    pixel = 1.0 / scale

    canvas = np.empty((image_size, image_size, 3), dtype=np.float32)
    canvas[:] = rng.uniform(20, 235, 3)
    p = params
    width_at = p["face_rx"] * (1 - p["chin"] * np.clip(v, 0, None))
    face = (np.sqrt((u / width_at) ** 2 + (v / p["face_ry"]) ** 2) - 1.0) * p["face_rx"]
    _paint(canvas, _soft(face, pixel), p["skin"])
    hair_edge = p["hair_line"] + p["hair_tilt"] * u
    hair = np.maximum(v - hair_edge, face - p["hair_side"] * (v < 0.1))  # a cap above the line, hugging the sides
    hair = np.minimum(hair, (np.sqrt((u / (p["face_rx"] + p["hair_side"])) ** 2 + ((v + 0.1) / (p["face_ry"] + 0.08)) ** 2) - 1) * 0.5)
    _paint(canvas, _soft(np.maximum(hair, -face - p["hair_side"]) * (v < p["eye_y"] - 0.05) + 10 * (v >= p["eye_y"] - 0.05), pixel), p["hair"])

    openness = rng.uniform(0.55, 1.15)
    for side in (-1, 1):
        cx = side * p["eye_dx"]
        _paint(canvas, _soft(_ellipse(u, v, cx, p["eye_y"], p["eye_rx"], p["eye_ry"] * openness), pixel), (245, 245, 240))
        _paint(canvas, _soft(_ellipse(u, v, cx, p["eye_y"], p["eye_ry"] * 0.95, p["eye_ry"] * 0.95 * openness), pixel), p["iris"])
        brow_y = p["eye_y"] - p["brow_gap"] - p["eye_ry"] + side * p["brow_tilt"] * (u - cx) * 0.5
        brow = np.maximum(np.abs(v - brow_y) - p["brow_thick"], np.abs(u - cx) - p["eye_rx"] * 1.3)
        _paint(canvas, _soft(brow, pixel), p["brow_color"])
    nose_top = p["eye_y"] + 0.05
    along = np.clip((v - nose_top) / p["nose_len"], 0, 1)
    nose = np.maximum(np.abs(u) - p["nose_w"] * (0.3 + 0.7 * along), np.maximum(nose_top - v, v - nose_top - p["nose_len"]))
    _paint(canvas, 0.45 * _soft(nose, pixel), p["skin"] * 0.6)
    smile = rng.uniform(-0.6, 1.0) * p["mouth_w"]
    mouth_centre = p["mouth_y"] - smile * (1 - (u / p["mouth_w"]) ** 2) * 0.35
    mouth = np.maximum(np.abs(v - mouth_centre) - p["mouth_h"], np.abs(u) - p["mouth_w"])
    if p["beard"] is not None:
        beard = np.maximum(face, mouth_centre - p["beard"] + 0.5 * p["mouth_h"] - v + 0.25 * np.abs(u))
        _paint(canvas, 0.85 * _soft(beard, pixel), p["hair"] * 0.9)
    _paint(canvas, _soft(mouth, pixel), p["lips"])
    if p["glasses"] is not None:
        frame_colour, thickness = p["glasses"]
        for side in (-1, 1):
            ring = np.abs(_ellipse(u, v, side * p["eye_dx"], p["eye_y"], p["eye_rx"] * 1.5, p["eye_rx"] * 1.2)) - thickness
            _paint(canvas, _soft(ring, pixel), frame_colour)
        bridge = np.maximum(np.abs(v - p["eye_y"] + 0.02) - thickness, np.abs(u) - (p["eye_dx"] - p["eye_rx"] * 1.5))
        _paint(canvas, _soft(bridge, pixel), frame_colour)
    for mole_u, mole_v, radius in p["moles"]:
        _paint(canvas, _soft(_ellipse(u, v, mole_u, mole_v, radius, radius), pixel) * (face < 0), (60, 40, 30))

    light_angle = rng.uniform(0, 2 * np.pi)
    light = 1 + float(rng.uniform(0, 0.35)) * (float(np.cos(light_angle)) * x + float(np.sin(light_angle)) * y) / (image_size / 2)
    canvas *= light[..., None] * (rng.uniform(0.75, 1.2) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * float(rng.uniform(1.5, 7.0))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_synthetic_faces(
    num_identities: int,
    images_per_identity: int,
    seed: int = 0,
    first_identity: int = 0,
    image_size: int = 112,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw synthetic identities in memory: `(uint8 images (N, S, S, 3), int32 labels 0..num_identities-1)`.

    Identity `first_identity + k` gets label k; the same (seed, identity) always draws the same person.

    Example:
        >>> images, labels = render_synthetic_faces(3, 2, seed=0)
        >>> images.shape, labels.tolist()
        ((6, 112, 112, 3), [0, 0, 1, 1, 2, 2])
    """
    labels = np.repeat(np.arange(num_identities, dtype=np.int32), images_per_identity)
    images = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
    for label in range(num_identities):
        identity = first_identity + label
        params = _identity_parameters(seed, identity)
        rng = np.random.default_rng((seed, identity, 1))
        for shot in range(images_per_identity):
            images[label * images_per_identity + shot] = render_face(params, rng, image_size)
    return images, labels


def synthetic_faces(
    out_dir: str | os.PathLike,
    num_identities: int,
    images_per_identity: int,
    seed: int = 0,
    first_identity: int = 0,
    image_size: int = 112,
    quality: int = 95,
) -> Path:
    """Write a synthetic identity-folder dataset `out_dir/<identity>/<shot>.jpg` and return `out_dir`.

    The images are procedurally drawn, face-LIKE pictures (see the module docstring), not real faces.
    Folder names are the zero-padded identity numbers, so `first_identity` keeps held-out sets apart.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())          # a real set: e.g. 50 identities x 20 images
        >>> root = synthetic_faces(folder / "synthetic_train", num_identities=5, images_per_identity=2, seed=0)
        >>> held_out = synthetic_faces(folder / "synthetic_test", 2, 2, seed=0, first_identity=5)
        >>> len(list(root.glob("*/*.jpg"))), sorted(path.name for path in held_out.iterdir())
        (10, ['000005', '000006'])
    """
    out_dir = Path(out_dir)

    def write_identity(label: int) -> None:
        identity = first_identity + label
        folder = out_dir / f"{identity:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        images, _ = render_synthetic_faces(1, images_per_identity, seed, identity, image_size)
        for shot, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            write_atomically(folder / f"{shot:04d}.jpg", buffer.getvalue())

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        list(pool.map(write_identity, range(num_identities)))
    return out_dir
