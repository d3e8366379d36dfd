"""The demo model in closed loop with real MuJoCo: the LIBERO bridge and the policy node run as
separate processes over DDS; this process only switches the instruction and records.

Acceptance: "move the gripper up" raises the end effector by >= 5 cm within 30 steps, "move the
gripper left" moves it >= 5 cm toward +y (LIBERO robot base frame). `run-demo` writes its video,
picture and per-instruction report.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rclpy")

from openvla_ros.demo.closed_loop import (DEMO_INSTRUCTION_TOPIC, DEMO_ORDER, Recorder, Segment,  # noqa: E402
                                          run_schedule, summarize_segments)
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY, INSTRUCTIONS, MOTIONS  # noqa: E402
from openvla_ros.demo.run import expected_actions  # noqa: E402
from openvla_ros.evaluation.node_pair import NodePair, PairConfig  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.slow]

STEPS = 30
MIN_TRAVEL_M = 0.05


@pytest.fixture(scope="module")
def demo_pair(demo_model, tmp_path_factory):
    config = PairConfig(backend="onnxruntime", model_dir=demo_model / "onnx",
                        domain_id=int(os.environ["ROS_DOMAIN_ID"]), log_dir=tmp_path_factory.mktemp("demo_logs"),
                        unnorm_key=DEMO_UNNORM_KEY, instruction_topic=DEMO_INSTRUCTION_TOPIC)
    with NodePair(config) as pair:
        yield pair, Recorder(pair, keep_images=False)


@pytest.mark.parametrize("word", ["up", "left"])
def test_instruction_moves_the_end_effector(demo_pair, demo_model, word):
    pair, recorder = demo_pair
    text = f"move the gripper {word}"
    run_schedule(pair, recorder, [Segment(text, STEPS)], "libero_object", 0, init_state_id=0)
    (segment,) = summarize_segments(recorder, expected_actions(demo_model / "onnx", [text]))
    axis, _ = MOTIONS[word]
    displacement = np.array(segment.displacement_m)
    assert segment.steps == STEPS
    assert segment.on_target == STEPS, "every action must be the decoded target of the instruction"
    assert displacement[axis] >= MIN_TRAVEL_M, f"{text}: displacement {displacement} m"
    off_axis = np.delete(displacement, axis)
    assert np.all(np.abs(off_axis) < displacement[axis] / 2), f"{text}: displacement {displacement} m"


def test_run_demo_writes_video_picture_and_report(demo_model, tmp_path):
    out = tmp_path / "run"
    # Not the test domain: the module's demo_pair nodes may still be running there.
    domain = str(int(os.environ["ROS_DOMAIN_ID"]) + 1)
    subprocess.run([sys.executable, "-m", "openvla_ros.cli", "run-demo", "--model-dir", str(demo_model),
                    "--out", str(out), "--motion-steps", "6", "--gripper-steps", "10", "--domain-id", domain],
                   check=True, timeout=600)
    report = json.loads((out / "report.json").read_text())
    segments = {seg["instruction"]: seg for seg in report["segments"]}
    assert list(segments) == list(DEMO_ORDER)
    assert sorted(DEMO_ORDER) == sorted(INSTRUCTIONS)
    for word, (axis, sign) in MOTIONS.items():
        seg = segments[f"move the gripper {word}"]
        assert sign * seg["displacement_m"][axis] > 0.02, seg  # 6 steps: ~7 cm when followed exactly
    before, closed, opened = (segments[f"{name}"]["finger_opening_end_m"] for name in
                              ("move the gripper down", "close the gripper", "open the gripper"))
    assert closed < before - 0.03 and opened > closed + 0.03, (before, closed, opened)
    assert sum(seg["steps"] for seg in segments.values()) == 6 * 6 + 2 * 10
    assert report["video_frames"] == 6 * 6 + 2 * 10
    from PIL import Image

    assert Image.open(out / "frame.png").size == (512, 512)
    assert (out / "demo.mp4").stat().st_size > 10_000
    markdown = (out / "report.md").read_text()
    assert "| move the gripper up |" in markdown and "frame.png" in markdown
