"""The one image reader: any image input -> uint8 RGB array, and folders of aligned faces -> one batch.

Alignment, inference, evaluation folders, IJB crops and export calibration all read images here, so a file
decodes the same way everywhere: EXIF orientation applied, grayscale replicated, alpha composited onto white,
16-bit scaled to 8 bits; a file that cannot be read is one `DataError` naming it. (Training pipelines decode
inside tf.data, `ghostface_keras.data.decode`.)

Example:
    >>> import numpy as np
    >>> load_rgb_image(np.zeros((4, 5), np.uint8)).shape
    (4, 5, 3)
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Union
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import check_regular_file

# Largest photo accepted (width x height), checked from the header before any pixel is allocated: 50 megapixels
# for formats that must be decoded whole (PNG, WebP, TIFF, ...); JPEGs, which decode at up to 1/8 scale, up
# to 170 megapixels (108-megapixel phone photos are JPEGs; Pillow's own bomb check refuses above 179).
MAX_PIXELS = 50_000_000
MAX_JPEG_PIXELS = 170_000_000
# Photos above this many pixels are read at a reduced size (JPEG: decoded at 1/2, 1/4 or 1/8 scale; other
# formats: reduced right after decoding), so conversions never copy more than this: a 200 KB PNG of 49
# megapixels then peaks near 0.3 GB instead of 1.3 GB. 16 megapixels leaves a face of a group photo far more
# pixels than its 112x112 crop needs; boxes and landmarks refer to the image as read.
WORKING_PIXELS = 16_000_000

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]


# --------------------------------------------------------------------------------------------------
# Image loading
# --------------------------------------------------------------------------------------------------
def describe_image(image: Any) -> str:
    """A short human name for an image input, used in error messages ("photo.jpg", "<numpy array>")."""
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or "<PIL image>"
    if isinstance(image, np.ndarray):
        return f"<numpy array {image.shape}>"
    return f"<{type(image).__name__}>"


def load_rgb_image(image: ImageInput) -> np.ndarray:
    """Any supported image input -> (H, W, 3) uint8 RGB array.

    Paths and PIL images honour the EXIF orientation tag (phone photos are stored sideways);
    grayscale is replicated to three channels; an alpha channel is composited onto white (a
    transparent background is not black hair). Numpy arrays must already be RGB (not BGR); float
    arrays in [0, 1] are scaled to [0, 255].

    Raises:
        DataError: the file is missing, unreadable or not an image; the array has a bad shape.

    Example:
        >>> load_rgb_image(np.zeros((4, 5), np.uint8)).shape
        (4, 5, 3)
    """
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, (str, os.PathLike, bytes)):
        pil_image = _open_image_file(image)
    elif isinstance(image, Image.Image):
        pil_image = image
    else:
        raise DataError(f"unsupported image input of type {type(image).__name__}: expected a path, "
                        "a PIL image or an RGB numpy array")
    return _pil_to_rgb(pil_image, describe_image(image))


def _open_image_file(source: str | os.PathLike | bytes) -> Image.Image:
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not os.path.isdir(source):  # a folder: "is a directory" below
        check_regular_file(source)  # a FIFO would block Image.open forever, a device read without end
    try:
        with warnings.catch_warnings():  # Pillow warns above 89 megapixels; our own limits below decide
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        # the header is read, the pixels are not: refuse a huge canvas before it is allocated (a small PNG can
        # declare 100 megapixels of one colour)
        width, height = pil_image.size
        is_jpeg = pil_image.format == "JPEG"
        limit, limit_name = (MAX_JPEG_PIXELS, "MAX_JPEG_PIXELS") if is_jpeg else (MAX_PIXELS, "MAX_PIXELS")
        if width * height > limit:
            raise DataError(f"{name}: {width}x{height} pixels is more than the {limit // 1_000_000} megapixels "
                            f"a{' JPEG' if is_jpeg else 'n image of this format'} may have here "
                            f"(ghostface_keras.core.images.{limit_name})")
        factor = _reduction_factor(width, height)
        if factor > 1 and is_jpeg:
            pil_image.draft(pil_image.mode, (-(-width // factor), -(-height // factor)))  # DCT-domain scaling
        pil_image.load()
        pil_image = _reduce_to_working_size(pil_image)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a directory, expected an image file") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as error:
        raise DataError(f"{name}: refused as a decompression bomb ({error})") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{name}: cannot read image ({error})") from None
    return pil_image


def _reduction_factor(width: int, height: int) -> int:
    """The smallest integer factor that brings `width x height` within `WORKING_PIXELS`."""
    factor = 1
    while -(-width // factor) * -(-height // factor) > WORKING_PIXELS:
        factor += 1
    return factor


def _reduce_to_working_size(pil_image: Image.Image) -> Image.Image:
    factor = _reduction_factor(*pil_image.size)
    if factor == 1:
        return pil_image
    if pil_image.mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "I;16", "F"):
        pil_image = pil_image.convert("RGBA" if "transparency" in pil_image.info else "RGB")  # palette, 1-bit
    exif = pil_image.getexif()  # reduce() drops it, and with it the orientation
    reduced = pil_image.reduce(factor)
    if exif:
        reduced.info["exif"] = exif.tobytes()
    return reduced


def _pil_to_rgb(pil_image: Image.Image, name: str) -> np.ndarray:
    try:
        pil_image = ImageOps.exif_transpose(pil_image)
        if pil_image.mode in ("RGBA", "LA", "PA") or (pil_image.mode == "P" and "transparency" in pil_image.info):
            rgba = pil_image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            pil_image = Image.alpha_composite(background, rgba)
        if pil_image.mode in ("I", "I;16", "I;16B", "F"):
            pil_image = _high_depth_to_8bit(pil_image)
        return np.asarray(pil_image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise DataError(f"{name}: cannot decode image ({error})") from None


def _high_depth_to_8bit(pil_image: Image.Image) -> Image.Image:
    # 16-bit / float greyscale (some scientific PGM/TIFF files): stretch to the 8-bit range
    values = np.asarray(pil_image, dtype=np.float64)
    top = values.max() if values.size and values.max() > 0 else 1.0
    return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"image array has shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) RGB "
                        "or (H, W, 4) RGBA")
    if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
        array = array * 255.0  # float images in [0, 1] (matplotlib / skimage convention)
    if array.shape[-1] == 4:
        alpha = array[..., 3:4].astype(np.float64) / 255.0
        array = array[..., :3].astype(np.float64) * alpha + 255.0 * (1.0 - alpha)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def read_face_images(paths: Sequence[Any], size: int = 112) -> np.ndarray:
    """Aligned faces from files (or any image inputs) -> (N, size, size, 3) uint8 RGB, resized bilinearly only
    when a file is not `size` x `size`.

    Example:
        >>> read_face_images([np.zeros((112, 112, 3), np.uint8), np.zeros((56, 56), np.uint8)]).shape
        (2, 112, 112, 3)
    """
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, source in enumerate(paths):
        rgb = load_rgb_image(source)
        if rgb.shape[:2] != (size, size):
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
        images[index] = rgb
    return images
