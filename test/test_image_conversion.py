"""Image message conversion: every encoding, row padding, every malformed field, compressed images."""
from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")

from PIL import Image as PILImage  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from openvla_ros.nodes import image_conversion  # noqa: E402
from openvla_ros.nodes.image_conversion import compressed_to_rgb, image_to_rgb, numpy_image_to_rgb  # noqa: E402

RGB = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
BIG = 10**6


def encoded(encoding: str) -> np.ndarray:
    """RGB in `encoding`'s channel layout (alpha = 255)."""
    alpha = np.full(RGB.shape[:2] + (1,), 255, np.uint8)
    return {"rgb8": RGB, "bgr8": RGB[:, :, ::-1], "rgba8": np.concatenate([RGB, alpha], 2),
            "bgra8": np.concatenate([RGB[:, :, ::-1], alpha], 2), "mono8": RGB[:, :, :1]}[encoding]


def message(pixels: np.ndarray, encoding: str, padding: int = 0) -> Image:
    h, w, c = pixels.shape
    rows = np.zeros((h, w * c + padding), np.uint8)
    rows[:, :w * c] = pixels.reshape(h, w * c)
    return Image(height=h, width=w, encoding=encoding, step=w * c + padding, data=rows.tobytes())


@pytest.mark.parametrize("encoding", list(image_conversion.ENCODINGS))
@pytest.mark.parametrize("padding", [0, 3])
def test_encodings_give_rgb(encoding, padding):
    out = numpy_image_to_rgb(message(encoded(encoding), encoding, padding), BIG)
    expected = np.repeat(RGB[:, :, :1], 3, axis=2) if encoding == "mono8" else RGB
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_unpadded_rgb8_is_a_read_only_view_and_other_layouts_are_copies():
    msg = message(RGB, "rgb8")
    out = numpy_image_to_rgb(msg, BIG)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] ^= 0xFF  # the frame can never change the message, nor be changed through it by mistake
    del msg
    np.testing.assert_array_equal(out, RGB)  # the view keeps the message's buffer alive
    for msg in (message(RGB, "rgb8", padding=3), message(encoded("bgr8"), "bgr8")):
        copy = numpy_image_to_rgb(msg, BIG)
        assert copy.flags.writeable and not np.shares_memory(copy, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("change, problem", [
    (dict(encoding="yuv422"), "unsupported encoding"),
    (dict(width=0), "expected width and height >= 1"),
    (dict(height=0), "expected width and height >= 1"),
    (dict(step=20), "step 20 is less than width 7 x 3"),
    (dict(height=6), "data has 105 bytes"),
])
def test_malformed_images_are_rejected(change, problem):
    msg = message(RGB, "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=problem):
        numpy_image_to_rgb(msg, BIG)


def test_too_many_pixels():
    with pytest.raises(ValueError, match="35 pixels; max_image_pixels is 34"):
        image_to_rgb(message(RGB, "rgb8"), 34)


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8"])
def test_png_is_lossless(fmt):
    buffer = io.BytesIO()
    PILImage.fromarray(RGB).save(buffer, format="PNG")
    np.testing.assert_array_equal(compressed_to_rgb(CompressedImage(format=fmt, data=buffer.getvalue()), BIG), RGB)


def test_jpeg_decodes_like_pillow():
    buffer = io.BytesIO()
    PILImage.fromarray(RGB).save(buffer, format="JPEG")
    expected = np.asarray(PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(compressed_to_rgb(CompressedImage(format="jpeg", data=buffer.getvalue()), BIG),
                                  expected)


@pytest.mark.parametrize("fmt, data, problem", [
    ("jpeg", b"\xff\xd8 not a jpeg", "cannot be decoded"),
    ("jpeg", b"", "no data"),
    ("tiff", b"II*\x00", "unsupported compressed format"),
])
def test_bad_compressed_images_are_rejected(fmt, data, problem):
    with pytest.raises(ValueError, match=problem):
        compressed_to_rgb(CompressedImage(format=fmt, data=data), BIG)


def test_compressed_pixel_limit_checked_before_decoding():
    buffer = io.BytesIO()
    PILImage.fromarray(RGB).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="max_image_pixels is 10"):
        compressed_to_rgb(CompressedImage(format="png", data=buffer.getvalue()), 10)


@pytest.mark.parametrize("encoding", list(image_conversion.ENCODINGS))
def test_cv_bridge_and_numpy_paths_agree(encoding):
    if not image_conversion.cv_bridge_available():
        pytest.skip("cv_bridge is not installed (venv without a ROS 2 install); the numpy path is used")
    msg = message(encoded(encoding), encoding, padding=3)
    np.testing.assert_array_equal(image_to_rgb(msg, BIG), numpy_image_to_rgb(msg, BIG))
