"""The image path of OpenVLA's LIBERO evaluation, bit for bit, without TensorFlow.

OpenVLA (and OpenVLA-OFT) feed the policy what the RLDS dataset builder and the Octo dataloader
made of the training frames: `experiments/robot/libero/libero_utils.py::resize_image` runs

    img = tf.image.encode_jpeg(img)                                  # quality 95, 4:2:0, baseline
    img = tf.io.decode_image(img, expand_animations=False, dtype=tf.uint8)
    img = tf.image.resize(img, (224, 224), method="lanczos3", antialias=True)
    img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

on the upright (180-degree rotated) agentview frame. Here:

- The JPEG encoding goes through Pillow, which bundles libjpeg-turbo as TensorFlow does, with
  TensorFlow's settings: `jpeg_set_defaults` + quality 95 (baseline tables; Pillow's
  force_baseline=FALSE only differs below quality 25), 4:2:0 chroma subsampling, no optimized
  Huffman tables, not progressive, 300 dpi in the JFIF header (TF's density default, so even the
  bytes are the same). It is decoded as TF's DecodeImage does: libjpeg-turbo with the fast
  integer IDCT (TF's own default, `dct_method=""` -> JDCT_IFAST, not libjpeg's islow) and fancy
  upsampling, through simplejpeg, which also bundles libjpeg-turbo.
- The resize is TensorFlow's ScaleAndTranslate kernel (`scale_and_translate_op.cc`) in float32:
  per axis, each output pixel's span of input pixels and their Lanczos-3 weights (kernel widened
  by the downscale factor when antialiasing, weights normalized by their float32 sum), then rows
  first, then columns, each output accumulated tap by tap in float32 as the C++ loops do. The
  kernel's sines come from the C library's `sinf`, as in TensorFlow.
- Rounding is round-half-to-even (`tf.round`), clipped to [0, 255].
"""
from __future__ import annotations

import ctypes
import ctypes.util
import io
from functools import lru_cache
from typing import Callable

import numpy as np
import simplejpeg
from PIL import Image

from openvla_ros.processing import validate_image

OPENVLA_IMAGE_SIZE = 224
JPEG_QUALITY = 95  # tf.io.encode_jpeg's default
JPEG_DPI = 300  # tf.io.encode_jpeg's x_density / y_density default (header only)
LANCZOS_RADIUS = 3.0
# TensorFlow's kernel uses this float constant for pi (sampling_kernels.h), not M_PI.
_TF_PI = np.float32(3.14159265359)


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """`tf.io.decode_image(tf.image.encode_jpeg(image))` with TensorFlow's default settings."""
    validate_image(image)
    return decode_jpeg(encode_jpeg(image))


def encode_jpeg(image: np.ndarray) -> bytes:
    """The bytes `tf.image.encode_jpeg(image)` writes (defaults: quality 95, 4:2:0, baseline)."""
    validate_image(image)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=False, progressive=False,
        dpi=(JPEG_DPI, JPEG_DPI))
    return buffer.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """uint8 HxWx3 RGB pixels of a JPEG, decoded as `tf.io.decode_image(data, dtype=tf.uint8)` does:
    TensorFlow picks libjpeg's fast integer IDCT (JDCT_IFAST) over libjpeg's default, with fancy
    upsampling on. Pillow cannot ask for that combination (its draft mode also drops fancy
    upsampling), simplejpeg (libjpeg-turbo's TurboJPEG API) can."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
    except ValueError as exc:
        raise ValueError(f"not decodable as JPEG: {exc}") from None


def resize_lanczos3(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`tf.image.resize(image, (height, width), method="lanczos3", antialias=True)`: float32 HxWxC."""
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has shape {image.shape}; expected a non-empty HxWxC array")
    if height <= 0 or width <= 0:
        raise ValueError(f"resize target {(height, width)} must be positive")
    in_height, in_width = image.shape[:2]
    pixels = image.astype(np.float32)
    rows = _gather(pixels, *_spans(height, in_height), axis=0)
    return _gather(rows, *_spans(width, in_width), axis=1)


def round_to_uint8(image: np.ndarray) -> np.ndarray:
    """`tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)` (round half to even)."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def openvla_policy_image(image: np.ndarray, size: int = OPENVLA_IMAGE_SIZE) -> np.ndarray:
    """OpenVLA's LIBERO image path after the 180-degree rotation: JPEG round trip, Lanczos-3
    resize to size x size, rounded back to uint8 (libero_utils.py `resize_image`)."""
    return round_to_uint8(resize_lanczos3(jpeg_round_trip(image), size, size))


@lru_cache(maxsize=32)
def _spans(output_size: int, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts[output_size], weights[output_size, span]) of ComputeSpansCore for tf.image.resize's
    scale (output / input, in float32), zero translation, antialias on."""
    scale = np.float32(output_size) / np.float32(input_size)
    inv_scale = np.float32(1.0 / float(scale))  # `const float inv_scale = 1.0 / scale;` (double divide)
    kernel_scale = max(inv_scale, np.float32(1.0))
    one_over_kernel_scale = np.float32(1.0) / kernel_scale
    reach = np.float32(LANCZOS_RADIUS) * kernel_scale
    span_size = min(2 * int(np.ceil(reach)) + 1, input_size)
    starts = np.zeros(output_size, np.int64)
    weights = np.zeros((output_size, span_size), np.float32)
    for x in range(output_size):
        sample = np.float32(x + 0.5) * inv_scale
        if sample < 0 or sample > input_size:
            continue  # TF leaves an empty span: the output pixel is 0
        start = int(np.ceil(sample - reach - np.float32(0.5)))
        end = int(np.floor(sample + reach - np.float32(0.5)))
        start = min(max(start, 0), input_size - 1)
        end = min(max(end, 0), input_size - 1) + 1
        taps = np.array([_lanczos3(abs((np.float32(source) + np.float32(0.5) - sample) * one_over_kernel_scale))
                         for source in range(start, end)], np.float32)
        total = np.float32(0.0)
        for weight in taps:  # sequential float32 sum, as the C++ loop
            total = np.float32(total + weight)
        if abs(total) >= np.float32(1000.0) * np.finfo(np.float32).tiny:
            weights[x, :end - start] = taps * (np.float32(1.0) / total)
        starts[x] = start
    return starts, weights


def _c_sinf() -> Callable[[float], float]:
    """The C library's `sinf`, which TensorFlow's `std::sin(float)` calls. It is not correctly
    rounded (glibc's is within 0.56 ULP), and a correctly rounded sine changes about one weight in
    twenty by one ULP, enough to move a pixel's rounding now and then."""
    library = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    sinf = library.sinf
    sinf.restype, sinf.argtypes = ctypes.c_float, [ctypes.c_float]
    return sinf


_sinf = _c_sinf()


def _lanczos3(x: np.float32) -> np.float32:
    radius = np.float32(LANCZOS_RADIUS)
    if x > radius:
        return np.float32(0.0)
    if float(x) <= 1e-3:
        return np.float32(1.0)
    pi_x = _TF_PI * x
    sin_a = np.float32(_sinf(float(pi_x)))
    sin_b = np.float32(_sinf(float(pi_x / radius)))
    return radius * sin_a * sin_b / (_TF_PI * _TF_PI * x * x)


def _gather(pixels: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sums of spans along `axis`, accumulated tap by tap in float32 (GatherRows/Columns).
    A tap past the input's end (which the C++ loops skip) has weight 0 here and reads the last
    pixel: it adds exactly +0.0, so the sums are the same."""
    size = pixels.shape[axis]
    shape = [1] * pixels.ndim
    shape[axis] = len(starts)
    out = np.zeros(pixels.shape[:axis] + (len(starts),) + pixels.shape[axis + 1:], np.float32)
    for tap in range(weights.shape[1]):
        index = np.minimum(starts + tap, size - 1)
        out += weights[:, tap].reshape(shape) * np.take(pixels, index, axis=axis)
    return out
