"""OpenVLA's LIBERO image path (JPEG round trip, Lanczos-3 resize to 224, round) without
TensorFlow: its properties here, and bit-for-bit equality with TensorFlow itself, stage by stage,
on random frames and real LIBERO frames at 128 and 256 px.

The TensorFlow comparison runs test/tf_reference/openvla_image_path.py in an interpreter that
has TensorFlow: $OPENVLA_TF_PYTHON if set (`make tf-check` makes such a venv and sets it), else
this interpreter if it can import tensorflow; otherwise it skips with the reason.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openvla_ros.tf_image import (decode_jpeg, encode_jpeg, jpeg_round_trip, openvla_policy_image, resize_lanczos3,
                                  round_to_uint8)

REFERENCE_SCRIPT = Path(__file__).parent / "tf_reference" / "openvla_image_path.py"
# SHA-256 of TensorFlow 2.21's output at every stage for `_integer_frames`, so the comparison also
# runs where TensorFlow is absent (CI); the TensorFlow test checks these against TensorFlow itself.
RECORDED_DIGESTS = Path(__file__).parent / "tf_reference" / "openvla_image_path_tf2.21.json"
STAGES = ("jpeg", "decoded", "resized", "final")


def _random_frames(size: int, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = {}
    for k in range(count):
        if k % 2:  # noise: every DCT coefficient and every tap matters
            frames[f"noise{size}_{k}"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:  # smooth ramps with saturated parts, closer to rendered scenes
            x = np.linspace(0.0, 1.0, size)
            phase = rng.random(3) * 6.0
            wave = np.sin(7.0 * x[:, None, None] + 4.0 * x[None, :, None] + phase)
            frames[f"smooth{size}_{k}"] = np.clip(128 + 160 * wave, 0, 255).astype(np.uint8)
    return frames


def _integer_frames() -> dict[str, np.ndarray]:
    """Frames from integer arithmetic only (no RNG stream, no libm), the same on every machine."""
    frames = {}
    for size in (128, 256):
        i, j, c = (a.astype(np.uint32) for a in np.indices((size, size, 3)))
        hashed = (i * np.uint32(1103515245) + j * np.uint32(12345) + c * np.uint32(2654435761)
                  + i * j * np.uint32(97)) >> np.uint32(9)
        frames[f"hash{size}"] = (hashed % 256).astype(np.uint8)
        wave = (i * 3 + j * 5 + c * 40) % 512
        frames[f"triangle{size}"] = np.where(wave < 256, wave, 511 - wave).astype(np.uint8)
        frames[f"blocks{size}"] = np.where(((i // 9) + (j // 13) + c) % 3 == 0, 255, (i * 2) % 256).astype(np.uint8)
    return frames


def _stage_digests(frame: np.ndarray) -> dict[str, str]:
    import hashlib

    data = encode_jpeg(frame)
    decoded = decode_jpeg(data)
    resized = resize_lanczos3(decoded, 224, 224)
    outputs = {"jpeg": data, "decoded": decoded.tobytes(), "resized": resized.astype("<f4").tobytes(),
               "final": round_to_uint8(resized).tobytes()}
    return {stage: hashlib.sha256(outputs[stage]).hexdigest() for stage in STAGES}


# ----- properties (no TensorFlow) -----
def test_round_to_uint8_rounds_half_to_even_and_clips():
    values = np.array([-3.0, 0.5, 1.5, 2.5, 2.4999, 254.5, 255.49, 300.0], np.float32)
    assert round_to_uint8(values).tolist() == [0, 0, 2, 2, 2, 254, 255, 255]


def test_resize_keeps_a_flat_image_flat_and_has_the_target_shape():
    flat = np.full((256, 200, 3), 77, np.uint8)
    resized = resize_lanczos3(flat, 224, 224)
    assert resized.dtype == np.float32 and resized.shape == (224, 224, 3)
    assert np.allclose(resized, 77.0, atol=1e-4)  # weights of every output sum to 1
    assert openvla_policy_image(np.full((128, 128, 3), 77, np.uint8)).shape == (224, 224, 3)


def test_resize_downscale_is_antialiased():
    # a 1-pixel checkerboard has no representable frequency at 224/256: the antialiased Lanczos
    # filter averages it out, where plain sampling would keep stripes
    board = ((np.indices((256, 256)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    resized = resize_lanczos3(board, 224, 224)[8:-8, 8:-8]
    assert np.abs(resized - 127.5).max() < 40.0


def test_jpeg_settings_are_tensorflows():
    data = encode_jpeg(_random_frames(64, 2, 0)["noise64_1"])
    assert data[:2] == b"\xff\xd8"
    # JFIF APP0: density unit 1 (dots per inch), 300 x 300 as tf.io.encode_jpeg writes
    app0 = data.index(b"JFIF\x00")
    assert data[app0 + 7:app0 + 12] == b"\x01\x01\x2c\x01\x2c"
    # SOF0 (baseline), three components; luma sampled 2x2 and chroma 1x1: 4:2:0
    sof = data.index(b"\xff\xc0")
    assert data[sof + 9] == 3 and [data[sof + 11], data[sof + 14], data[sof + 17]] == [0x22, 0x11, 0x11]
    assert b"\xff\xc2" not in data  # not progressive


def test_jpeg_round_trip_is_close_and_rejects_bad_input():
    frame = _random_frames(96, 1, 3)["smooth96_0"]
    decoded = jpeg_round_trip(frame)
    assert decoded.shape == frame.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame).mean() < 3.0
    with pytest.raises(ValueError, match="uint8"):
        jpeg_round_trip(frame.astype(np.float32))
    with pytest.raises(ValueError, match="JPEG"):
        decode_jpeg(b"not a jpeg")


def test_integer_frames_match_tensorflows_recorded_output():
    recorded = json.loads(RECORDED_DIGESTS.read_text())
    frames = _integer_frames()
    assert sorted(recorded["frames"]) == sorted(frames)
    for name, frame in frames.items():
        assert _stage_digests(frame) == recorded["frames"][name], name


# ----- against TensorFlow -----
@pytest.fixture(scope="module")
def tf_python() -> str:
    named = os.environ.get("OPENVLA_TF_PYTHON")
    if named:
        return named
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    pytest.skip("TensorFlow is not importable here and $OPENVLA_TF_PYTHON names no interpreter that has it: "
                "`make tf-check` installs tensorflow-cpu into its own venv and runs this comparison")


def _tensorflow_stages(tf_python: str, frames: dict[str, np.ndarray], tmp_path: Path) -> dict[str, np.ndarray]:
    frames_path, out_path = tmp_path / "frames.npz", tmp_path / "tf.npz"
    np.savez(frames_path, **frames)
    done = subprocess.run([tf_python, str(REFERENCE_SCRIPT), str(frames_path), str(out_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out_path) as reference:
        return {name: reference[name] for name in reference.files}


def _assert_bit_exact(frames: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    for name, frame in frames.items():
        data = encode_jpeg(frame)
        assert data == reference[f"{name}.jpeg"].tobytes(), f"{name}: JPEG bytes differ"
        decoded = decode_jpeg(data)
        assert np.array_equal(decoded, reference[f"{name}.decoded"]), f"{name}: decoded pixels differ"
        resized = resize_lanczos3(decoded, 224, 224)
        assert resized.dtype == np.float32
        assert np.array_equal(resized, reference[f"{name}.resized"]), (
            f"{name}: resized floats differ (max {np.abs(resized - reference[f'{name}.resized']).max()})")
        assert np.array_equal(openvla_policy_image(frame), reference[f"{name}.final"]), f"{name}: final pixels differ"


def test_random_frames_match_tensorflow_bit_for_bit(tf_python, tmp_path):
    frames = {**_random_frames(128, 6, 1), **_random_frames(256, 6, 2)}
    _assert_bit_exact(frames, _tensorflow_stages(tf_python, frames, tmp_path))


def test_recorded_digests_are_tensorflows(tf_python, tmp_path):
    import hashlib

    frames = _integer_frames()
    reference = _tensorflow_stages(tf_python, frames, tmp_path)
    _assert_bit_exact(frames, reference)
    tf_digests = {name: {stage: hashlib.sha256(reference[f"{name}.{stage}"].astype(
        "<f4" if stage == "resized" else np.uint8).tobytes()).hexdigest() for stage in STAGES} for name in frames}
    recorded = json.loads(RECORDED_DIGESTS.read_text())
    assert recorded["tensorflow"] == str(reference["tensorflow_version"])
    assert recorded["frames"] == tf_digests, f"TensorFlow's digests now: {json.dumps(tf_digests, indent=1)}"


@pytest.mark.sim
@pytest.mark.slow
def test_libero_frames_match_tensorflow_bit_for_bit(tf_python, tmp_path):
    from openvla_ros.sim.libero_env import NO_OP_ACTION, LiberoEnv

    frames = {}
    for size in (128, 256):
        with LiberoEnv("libero_object", 0, camera_size=size) as env:
            obs = env.reset(init_state_id=0)
            frames[f"agentview{size}_reset"], frames[f"wrist{size}_reset"] = obs.agentview, obs.wrist
            move = NO_OP_ACTION.copy()
            move[:3] = (0.5, -0.3, -0.4)
            for _ in range(15):
                obs = env.step(move)
            frames[f"agentview{size}_moved"], frames[f"wrist{size}_moved"] = obs.agentview, obs.wrist
    _assert_bit_exact(frames, _tensorflow_stages(tf_python, frames, tmp_path))
