"""Image preprocessing, the numpy mirror of trainer.data.pipeline (spec: docs/CONTRACTS.md "Images").

1. `load_image`: anything an app holds -> RGB uint8 [h, w, 3] (grey replicated, alpha dropped,
   16-bit grey to its high byte). Given the model input size, a large JPEG is decoded at 1/2,
   1/4 or 1/8 scale by libjpeg (`draft_ratio`), as the trainer does. An encoded image (path or
   bytes) is then turned upright by the EXIF orientation in its header (`exif_orientation`,
   `orient`), as the trainer does; arrays and PIL images are taken as they are.
2. `resize_image`: bilinear, half-pixel centres, no antialias, in float32, round half to even,
   clip, uint8 — the arithmetic of TensorFlow's ResizeBilinear kernel, step by step, so the
   tensors are equal, not merely close (tests/test_preprocess.py proves it).

Limits (checked on the file and on the image header, before anything is decoded): image data of
at most MAX_IMAGE_BYTES, at most MAX_IMAGE_PIXELS in the header, and at most MAX_DECODED_PIXELS
actually decoded (after JPEG draft scaling), so a decompression bomb costs nothing.
"""
from __future__ import annotations

import functools
import io
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .errors import InvalidImageError
from .fileio import read_regular_file

Image.MAX_IMAGE_PIXELS = 200_000_000  # Pillow's own guard (it raises only above twice this)
MAX_IMAGE_BYTES = 100 << 20
MAX_IMAGE_PIXELS = 200_000_000  # a 200-megapixel phone photo still opens...
MAX_DECODED_PIXELS = 50_000_000  # ...because as a JPEG it is decoded at reduced scale
FORMATS = ("JPEG", "MPO", "PNG")  # MPO: a phone's JPEG carrying more pictures, decoded as its first
DRAFT_MARGIN = 1  # a scaled JPEG decode keeps its short side >= the model input's long side (docs/CONTRACTS.md)
# What each EXIF orientation (1-8) asks of the stored pixels [rows, cols, 3] to show them upright,
# in this order: (swap rows and columns, reverse the rows, reverse the columns). PIL's
# ImageOps.exif_transpose does the same (tests compare); trainer.data.pipeline applies this table too.
ORIENTATION_STEPS = {1: (False, False, False), 2: (False, False, True), 3: (False, True, True),
                     4: (False, True, False), 5: (True, False, False), 6: (True, False, True),
                     7: (True, True, True), 8: (True, True, False)}


def draft_ratio(height: int, width: int, size) -> int:
    """The libjpeg scale denominator (1, 2, 4 or 8) for decoding an h x w JPEG for a model input
    `size`: the largest that keeps min(h, w) / r >= DRAFT_MARGIN * max(size) (symmetric in h and w,
    so it holds for any aspect ratio). trainer.data.pipeline applies the same rule."""
    if size is None:
        return 1
    need = DRAFT_MARGIN * max(int(s) for s in size)
    return next(r for r in (8, 4, 2, 1) if min(height, width) // r >= need or r == 1)


# warnings.catch_warnings swaps the process's warning filters: concurrent calls must not interleave.
_warning_filters = threading.Lock()


@contextmanager
def _quiet_pillow():
    """Silence, here only, what Pillow prints about what these checks handle: its
    DecompressionBombWarning (the pixel limits refuse such an image with a typed error) and its
    complaints while parsing a corrupt EXIF block (ignored, see exif_orientation)."""
    with _warning_filters, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        yield


@contextmanager
def open_image(fp):
    """Image.open (lazy: reads the header only), quietly (`_quiet_pillow`)."""
    with _quiet_pillow():
        image = Image.open(fp)
    with image:
        yield image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) in the header of an opened, not yet decoded JPEG or PNG; 1 when
    there is none or it is unreadable. A PNG's eXIf chunk counts only before the image data (one
    after it cannot be found without decoding the image)."""
    if image.format not in FORMATS or (image.format == "PNG" and "exif" not in image.info):
        return 1  # (PIL's getexif would decode the whole PNG to look further)
    try:
        with _quiet_pillow():
            value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block does not spoil the pixels: ignored alike on both sides
        return 1
    return value if type(value) is int and value in ORIENTATION_STEPS else 1


def image_orientation(source) -> int:
    """`exif_orientation` of an image file (path) or JPEG/PNG bytes, reading the header only; 1 for
    anything unreadable (what then fails to decode is reported where it is decoded)."""
    try:
        with open(source, "rb") if isinstance(source, (str, Path)) else io.BytesIO(source) as f, \
                open_image(f) as image:
            return exif_orientation(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels [rows, cols, C] -> upright, per ORIENTATION_STEPS[orientation] (a view)."""
    transpose, reverse_rows, reverse_columns = ORIENTATION_STEPS[orientation]
    if transpose:
        pixels = pixels.transpose(1, 0, *range(2, pixels.ndim))
    return pixels[::-1 if reverse_rows else 1, ::-1 if reverse_columns else 1]


def _from_pil(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGB", "L"):
        rgb = np.asarray(image)
    elif image.mode in ("I;16", "I;16L", "I;16B"):  # 16-bit grey: its high byte, like TensorFlow's decode_png
        rgb = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    elif image.mode == "F":  # float pixels: the numpy rules (values in [0, 1]), not PIL's truncation
        rgb = np.asarray(image, dtype=np.float32)
    elif image.mode.startswith("I"):
        raise InvalidImageError(f"{image.mode} images (32-bit integer) are not supported; convert to 8-bit RGB")
    else:  # RGBA, LA, P (palette), CMYK, YCbCr...: PIL's conversion drops alpha
        rgb = np.asarray(image.convert("RGB"))
    return _from_array(rgb)


def _decode(data: bytes, source: str, size=None) -> np.ndarray:
    if not data:
        raise InvalidImageError(f"{source}: empty image data")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImageError(f"{source}: {len(data):,} bytes of image data, over the limit of {MAX_IMAGE_BYTES:,}")
    try:
        with open_image(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                raise InvalidImageError(f"{source}: {image.format} images are not supported (JPEG or PNG)")
            width, height = image.size
            ratio = draft_ratio(height, width, size) if image.format != "PNG" else 1
            decoded = -(-width // ratio) * -(-height // ratio)
            if width * height > MAX_IMAGE_PIXELS or decoded > MAX_DECODED_PIXELS:
                raise InvalidImageError(f"{source}: {width}x{height} pixels is over the limit "
                                        f"({MAX_IMAGE_PIXELS:,} pixels, {MAX_DECODED_PIXELS:,} decoded)")
            orientation = exif_orientation(image)  # from the header, as the trainer reads it
            if ratio > 1:
                image.draft(image.mode, (width // ratio, height // ratio))  # libjpeg DCT scaling
            image.load()
            # Upright after the scaled decode: the ratio depends on min(h, w) only, so it is the
            # same for the stored and the upright image (the trainer does the same, in this order).
            return np.ascontiguousarray(orient(_from_pil(image), orientation))
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
    elif array.dtype.kind == "f" and array.dtype.itemsize in (2, 4, 8):  # either byte order
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


def load_image(image, size=None) -> np.ndarray:
    """numpy array, PIL image, path (str/Path) or JPEG/PNG bytes -> RGB uint8 [h, w, 3].

    `size`: the model input (H, W) the image is for; a large JPEG file or bytes is then decoded at
    reduced scale (`draft_ratio`). Raises InvalidImageError naming the problem (rank, channels,
    dtype, emptiness, decoding, limits)."""
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image), "image bytes", size)
    if isinstance(image, (str, Path)):
        return _decode(read_regular_file(image, MAX_IMAGE_BYTES, InvalidImageError, "image file"), str(image), size)
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


_BAND_VALUES = 1 << 15  # float32 values per temporary of one band of output rows (128 KiB)


@functools.lru_cache(maxsize=32)
def _resize_plan(in_height: int, in_width: int, height: int, width: int):
    """Gather indices and weights of one resize (an app resizes frames of the same size again and
    again): top and bottom rows, y weights [H, 1]; left and right byte columns of a flat RGB row
    and their x weights, [W * 3] each."""
    top, bottom, y_lerp = _axis_weights(in_height, height)
    left, right, x_lerp = _axis_weights(in_width, width)
    channel = np.arange(3)
    left, right = ((cols[:, None] * 3 + channel).ravel() for cols in (left, right))
    plan = top, bottom, y_lerp[:, None], left, right, np.repeat(x_lerp, 3)
    for array in plan:
        array.flags.writeable = False  # shared by every call of this size
    return plan


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """uint8 [h, w, 3] -> C-contiguous uint8 [H, W, 3] per the contract; a same-size image passes through."""
    image = load_image(image) if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                                      and image.ndim == 3 and image.shape[2] == 3) else image
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {size!r}")
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    top, bottom, y_lerp, left, right, x_lerp = _resize_plan(*image.shape[:2], height, width)
    # Rows as flat [w * 3] vectors, so every gather and every float32 op below runs over whole
    # output rows (a trailing axis of 3 would make numpy loop 3 elements at a time).
    rows = np.ascontiguousarray(image).reshape(image.shape[0], -1)
    out = np.empty((height, width * 3), dtype=np.uint8)

    def lerp_columns(row_indices):
        """TF's top_values/bottom_values: left + (right - left) * x_lerp, in float32."""
        picked = rows[row_indices]  # (a 1-D index on the first axis copies whole rows: cheaper than np.take here)
        values = np.take(picked, left, axis=1, mode="clip").astype(np.float32)
        step = np.take(picked, right, axis=1, mode="clip").astype(np.float32)
        step -= values
        step *= x_lerp
        values += step
        return values

    # A band of output rows at a time keeps the float32 temporaries in the CPU's cache (and the
    # model's weights there for the invoke that follows): the same arithmetic, row by row.
    band = max(1, _BAND_VALUES // (width * 3))
    for begin in range(0, height, band):
        rows_here = slice(begin, begin + band)
        # The same float32 arithmetic as the kernel, in place: top + (bottom - top) * y_lerp.
        values, bottom_values = lerp_columns(top[rows_here]), lerp_columns(bottom[rows_here])
        bottom_values -= values
        bottom_values *= y_lerp[rows_here]
        values += bottom_values
        # round half to even, as tf.round; no clip to [0, 255] needed (the trainer's is a no-op):
        # with 0 <= lerp < 1, a + (b - a) * lerp rounds into [min(a, b), max(a, b)] (IEEE rounding
        # is monotone), so every value stays in [0, 255] and the uint8 cast is exact.
        np.rint(values, out=values)
        out[rows_here] = values
    return out.reshape(height, width, 3)


def prepare_image(image, size) -> np.ndarray:
    """What the model's `image` input takes: uint8 [1, H, W, 3]."""
    if type(image) is np.ndarray and image.dtype == np.uint8 and image.shape == (*size, 3) \
            and image.flags.c_contiguous:  # already what the model takes (the camera-frame case)
        return image[None]
    return resize_image(load_image(image, size), size)[None]
