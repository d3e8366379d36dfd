"""`openvla-ros eval-libero --model-family oft` end to end: the LIBERO bridge and the policy node
serving the official OFT fixture's ONNX export, in their own processes, in lockstep through the ROS
topics (agentview + wrist camera through OFT's image path, the robot state, a chunk per ~/step that
the bridge executes point by point).

The tiny random model does not solve the task: the test checks that chunks flow and are executed,
not success. Two episodes of 12 steps: each queries the policy twice (8 + 4 of 8 points executed,
the episode ending inside the second chunk).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

CHUNK = 8
MAX_STEPS = 12


@pytest.mark.slow
@pytest.mark.sim
def test_eval_libero_oft_executes_chunks_through_the_ros_topics(official_oft_onnx_export, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "openvla_ros.cli", "eval-libero", "--suite", "libero_spatial", "--tasks", "0",
           "--episodes-per-task", "2", "--model-family", "oft", "--model-dir", str(official_oft_onnx_export),
           "--backend", "onnxruntime", "--out", str(out), "--max-steps", str(MAX_STEPS), "--allow-protocol-drift",
           "--no-video", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert "libero_spatial: " in done.stdout and "episodes succeeded" in done.stdout

    results = json.loads((out / "results.json").read_text())
    run = results["run"]
    assert run["complete"] and run["model_family"] == "oft" and results["episodes_total"] == 2
    # OFT's protocol but for the episode plan and length (the fixture's key is an official fine-tune's)
    settings = run["protocol_settings"]
    assert (settings["model_family"], settings["image_preprocess"], settings["camera_size"],
            settings["center_crop_scale"], settings["unnorm_key"]) == (
        "oft", "openvla", 256, 0.9, "libero_spatial_no_noops")
    assert sorted(d["setting"] for d in run["protocol_drift"]) == ["episodes_per_task", "max_steps", "tasks"]
    episodes = results["episodes"]
    assert [(e["task_id"], e["init_state_id"]) for e in episodes] == [(0, 0), (0, 1)]
    for episode in episodes:
        assert episode["max_steps"] == MAX_STEPS and episode["actions_rejected"] == 0
        assert episode["steps"] == MAX_STEPS or episode["success"]
        # one action latency per chunk received: every point of a chunk was a step of its own
        assert len(episode["latency_ms"]) == math.ceil(episode["steps"] / CHUNK)
        assert all(v > 0 for v in episode["latency_ms"])
    assert results["latency_ms"]["count"] == sum(len(e["latency_ms"]) for e in episodes)

    logs = {path.name.split("_domain")[0]: path.read_text() for path in (out / "logs").iterdir()}
    assert "chunks of 8 from 2 image(s) and the robot state" in logs["policy_node"]
    if not any(e["success"] for e in episodes):
        assert logs["libero_bridge"].count("episode over inside a chunk: its last 4 of 8 points were not executed") == 2
