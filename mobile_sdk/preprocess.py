"""Image preprocessing, the numpy mirror of trainer.pipeline (spec: docs/CONTRACTS.md "Images").

1. `load_image`: anything an app holds -> RGB uint8 [h, w, 3] (grey replicated, alpha dropped).
2. `resize_image`: bilinear, half-pixel centres, no antialias, in float32, round half to even,
   clip, uint8 — the arithmetic of TensorFlow's ResizeBilinear kernel, step by step, so the
   tensors are equal, not merely close (tests/test_preprocess.py proves it).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidImageError

Image.MAX_IMAGE_PIXELS = 200_000_000  # refuse decompression bombs, but allow large photos


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGB", "L"):
        rgb = np.asarray(image)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        raise InvalidImageError(f"{image.mode} images (16/32-bit) are not supported; convert to 8-bit RGB")
    else:  # RGBA, LA, P (palette), CMYK, YCbCr...: PIL's conversion drops alpha
        rgb = np.asarray(image.convert("RGB"))
    return _from_array(rgb)


def _decode(data: bytes, source: str) -> np.ndarray:
    if not data:
        raise InvalidImageError(f"{source}: empty image data")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG"):
                raise InvalidImageError(f"{source}: {image.format} images are not supported (JPEG or PNG)")
            image.load()
            return _from_pil(image)
    except InvalidImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"{source}: cannot decode image bytes (truncated or not JPEG/PNG): {exc}") from None


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise InvalidImageError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidImageError(f"image is empty: shape {array.shape}")
    channels = array.shape[2]
    if channels not in (1, 3, 4):
        raise InvalidImageError(f"image must have 1, 3 or 4 channels, got {channels} (shape {array.shape})")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(array).all():
            raise InvalidImageError("float image contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidImageError(f"float images must be in [0, 1], got values in [{low:g}, {high:g}] "
                                    "(pass uint8 for 0..255 pixels)")
        pixels = np.round(array.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    else:
        raise InvalidImageError(f"image dtype must be uint8 or float in [0, 1], got {array.dtype}")
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif channels == 4:
        pixels = pixels[:, :, :3]
    return np.ascontiguousarray(pixels)


def load_image(image) -> np.ndarray:
    """numpy array, PIL image, path (str/Path) or JPEG/PNG bytes -> RGB uint8 [h, w, 3].

    Raises InvalidImageError naming the problem (rank, channels, dtype, emptiness, decoding)."""
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image), "image bytes")
    if isinstance(image, (str, Path)):
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {image}: {exc.strerror or exc}") from None
        return _decode(data, str(image))
    raise InvalidImageError(f"unsupported image type {type(image).__name__}: pass a numpy array, PIL image, "
                            "path or JPEG/PNG bytes")


def _axis_weights(in_size: int, out_size: int):
    """TensorFlow's half-pixel bilinear weights for one axis, in float32 like the kernel."""
    scale = np.float32(in_size / out_size)  # the kernel divides in float and stores a float
    centre = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centre)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centre), in_size - 1).astype(np.int64)
    return lower, upper, (centre - floor).astype(np.float32)


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """uint8 [h, w, 3] -> C-contiguous uint8 [H, W, 3] per the contract; a same-size image passes through."""
    image = load_image(image) if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                                      and image.ndim == 3 and image.shape[2] == 3) else image
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {size!r}")
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    top, bottom, y_lerp = _axis_weights(image.shape[0], height)
    left, right, x_lerp = _axis_weights(image.shape[1], width)
    # Rows as flat [w * 3] vectors, so every gather and every float32 op below runs over whole
    # output rows (a trailing axis of 3 would make numpy loop 3 elements at a time).
    rows = np.ascontiguousarray(image).reshape(image.shape[0], -1)
    channel = np.arange(3)
    left, right = ((cols[:, None] * 3 + channel).ravel() for cols in (left, right))
    x_lerp = np.repeat(x_lerp, 3)

    def lerp_columns(row_indices):
        """TF's top_values/bottom_values: left + (right - left) * x_lerp, in float32."""
        picked = np.take(rows, row_indices, axis=0)
        values = np.take(picked, left, axis=1, mode="clip").astype(np.float32)
        step = np.take(picked, right, axis=1, mode="clip").astype(np.float32)
        step -= values
        step *= x_lerp
        values += step
        return values

    # The same float32 arithmetic as the kernel, in place: top + (bottom - top) * y_lerp.
    out, bottom_values = lerp_columns(top), lerp_columns(bottom)
    bottom_values -= out
    bottom_values *= y_lerp[:, None]
    out += bottom_values
    np.rint(out, out=out)  # round half to even, as tf.round
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(height, width, 3)


def prepare_image(image, size) -> np.ndarray:
    """What the model's `image` input takes: uint8 [1, H, W, 3]."""
    return resize_image(load_image(image), size)[None]
