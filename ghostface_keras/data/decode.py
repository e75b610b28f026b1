"""Turn encoded image bytes into the pipeline's one pixel format: RGB uint8, image_size x image_size.

Every reader here (identity folders, RecordIO, `.bin` files) decodes through `decode_image_bytes`, so
training, evaluation and conversion see identical pixels for the same file. Pillow is used rather than
TensorFlow's decoders because it reports a truncated or foreign file as an exception we can count and
skip (a TF decode error would stop the whole tf.data pipeline), and because it reads every format found
in face datasets (JPEG, PNG, BMP, GIF, WebP, PGM/PPM, TIFF). JPEGs are decoded with libjpeg-turbo's
accurate integer DCT, the same pixels `tf.io.decode_jpeg(..., dct_method="INTEGER_ACCURATE")` gives.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.progress import ProgressBar

logger = logging.getLogger(__name__)

# Training images are face crops: one over 16 megapixels (4000 x 4000) is refused from its header, before its
# pixels are allocated (a 1 MB JPEG can declare 60 megapixels, 1.3 GB of decoding), and counted as a skip.
MAX_TRAINING_PIXELS = 16_000_000


class ImageDecodeError(ValueError):
    """One encoded image that cannot be turned into pixels (the caller decides: skip or raise)."""


def decode_image_bytes(encoded: bytes, image_size: int = 112) -> np.ndarray:
    """Decode one encoded image to an RGB uint8 array of shape (image_size, image_size, 3).

    Grayscale, palette, 16-bit, CMYK and RGBA images become RGB (alpha is dropped, as
    `tf.io.decode_image(channels=3)` does); other sizes are resized with bilinear interpolation.

    Example:
        >>> import io; from PIL import Image
        >>> buffer = io.BytesIO(); Image.new("L", (92, 112), 200).save(buffer, "PNG")
        >>> decode_image_bytes(buffer.getvalue()).shape
        (112, 112, 3)
    """
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
            if width * height > MAX_TRAINING_PIXELS:
                raise ImageDecodeError(f"{width}x{height} pixels is more than the {MAX_TRAINING_PIXELS // 1_000_000} "
                                       "megapixels a training image may have (data.decode.MAX_TRAINING_PIXELS)")
            image.load()  # forces the full decode: a truncated file fails here, not later
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16/32-bit grayscale: scale to 8 bits instead of letting PIL clip at 255
                array = np.asarray(image, dtype=np.float64)
                peak = max(float(array.max()), 1.0)
                image = Image.fromarray(np.uint8(np.rint(array * (255.0 / peak) if peak > 255 else array)))
            rgb = image.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(str(error) or type(error).__name__) from error
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_many(
    count: int,
    read_bytes: Callable[[int], bytes],
    image_size: int = 112,
    workers: int | None = None,
    progress_label: str | None = None,
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode items 0..count-1 in a thread pool (Pillow releases the GIL while decoding).

    Returns the uint8 images of the items that decoded, in item order, and `(item, reason)` for the
    ones that did not.

    Example:
        >>> import io; from PIL import Image
        >>> buffer = io.BytesIO(); Image.new("RGB", (112, 112)).save(buffer, "PNG")
        >>> blobs = [buffer.getvalue(), b"not an image"]
        >>> images, failures = decode_many(2, blobs.__getitem__)
        >>> images.shape, [item for item, _ in failures]
        ((1, 112, 112, 3), [1])
    """
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(count, dtype=bool)
    failures: list[tuple[int, str]] = []

    def work(item: int) -> None:
        try:
            images[item] = decode_image_bytes(read_bytes(item), image_size)
            ok[item] = True
        except (ImageDecodeError, DataError, OSError) as error:  # DataError: a corrupt RecordIO record
            failures.append((item, str(error)))

    progress = _progress(count, progress_label)
    chunk = 256
    with ThreadPoolExecutor(max_workers=workers or min(16, (os.cpu_count() or 2) + 2)) as pool:
        for start in range(0, count, chunk):
            list(pool.map(work, range(start, min(start + chunk, count))))
            if progress is not None:
                progress.update(min(start + chunk, count))
    failures.sort()
    return (images if ok.all() else images[ok]), failures


def _progress(count: int, label: str | None) -> ProgressBar | None:
    """A progress bar for long decodes only (short ones would just add noise to logs)."""
    if label is None or count < 5000:
        return None
    logger.info(label)
    return ProgressBar(count, "image")


def sniff_image_extension(encoded: bytes) -> str:
    """File extension matching the encoded bytes (".jpg" for unknown data, as insightface writes).

    Example:
        >>> sniff_image_extension(b"\\x89PNG\\r\\n\\x1a\\n....")
        '.png'
    """
    signatures: Sequence[tuple[bytes, str]] = (
        (b"\xff\xd8\xff", ".jpg"),
        (b"\x89PNG\r\n\x1a\n", ".png"),
        (b"BM", ".bmp"),
        (b"GIF8", ".gif"),
        (b"RIFF", ".webp"),
    )
    for signature, extension in signatures:
        if encoded.startswith(signature):
            return extension
    return ".jpg"
