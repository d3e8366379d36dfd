"""ROS image messages -> uint8 HxWx3 RGB numpy arrays, with every malformed field rejected.

`image_to_rgb` uses cv_bridge where it is installed and an equivalent numpy path otherwise
(`numpy_image_to_rgb`, always available); both are checked against each other by the tests where
cv_bridge exists. Every problem raises ValueError naming the field and what was expected, so the
node can count and log it instead of crashing.
"""
from __future__ import annotations

import io

import numpy as np

# encoding -> (channels, channel indices giving R, G, B)
ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
COMPRESSED_FORMATS = ("jpeg", "png")

try:  # cv_bridge ships with ROS 2 installs, not with the venv wheels
    from cv_bridge import CvBridge

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:
    _BRIDGE = None


def cv_bridge_available() -> bool:
    return _BRIDGE is not None


def check_image_fields(encoding: str, height: int, width: int, step: int, data_len: int, max_pixels: int) -> int:
    """Validate a sensor_msgs/Image's layout fields; returns the encoding's channel count."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image is {width}x{height}; expected width and height >= 1")
    if height * width > max_pixels:
        raise ValueError(f"image has {width}x{height} = {width * height} pixels; max_image_pixels is {max_pixels}")
    channels = ENCODINGS[encoding][0]
    if step < width * channels:
        raise ValueError(f"step {step} is less than width {width} x {channels} channels ({encoding})")
    if data_len < height * step:
        raise ValueError(f"data has {data_len} bytes; expected height {height} x step {step} = {height * step}")
    return channels


def numpy_image_to_rgb(msg, max_pixels: int) -> np.ndarray:
    """sensor_msgs/Image -> uint8 HxWx3 RGB, C-contiguous (row padding beyond width x channels dropped).

    An unpadded rgb8 frame is returned as a read-only view of the message's buffer (which the view
    keeps alive): the message belongs to the callback, so copying 900 KiB per 640x480 frame on the
    callback path would buy nothing. Every other layout is a new array.
    """
    channels = check_image_fields(msg.encoding, msg.height, msg.width, msg.step, len(msg.data), max_pixels)
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=msg.height * msg.step).reshape(msg.height, msg.step)
    pixels = rows[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
    order = ENCODINGS[msg.encoding][1]
    if order == (0, 1, 2) and channels == 3 and pixels.flags.c_contiguous:
        pixels.flags.writeable = False
        return pixels
    return np.ascontiguousarray(pixels[:, :, order])


def image_to_rgb(msg, max_pixels: int) -> np.ndarray:
    """sensor_msgs/Image -> uint8 HxWx3 RGB, through cv_bridge when installed."""
    if _BRIDGE is None:
        return numpy_image_to_rgb(msg, max_pixels)
    check_image_fields(msg.encoding, msg.height, msg.width, msg.step, len(msg.data), max_pixels)
    return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))


def compressed_to_rgb(msg, max_pixels: int) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> uint8 HxWx3 RGB.

    The header is read first, so an image over `max_pixels` is refused before it is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    # image_transport writes e.g. "rgb8; jpeg compressed bgr8"; plain publishers write "jpeg".
    if not any(name in msg.format.lower() for name in COMPRESSED_FORMATS + ("jpg",)):
        raise ValueError(f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    if len(msg.data) == 0:
        raise ValueError("compressed image has no data")
    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"compressed image is {width}x{height} = {width * height} pixels; "
                                 f"max_image_pixels is {max_pixels}")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"compressed image ({msg.format!r}, {len(msg.data)} bytes) cannot be decoded: {exc}") from exc
