"""OpenVLA's published LIBERO evaluation protocol as settings, and a run's drift from it.

The protocol is what `experiments/robot/libero/run_libero_eval.py` (openvla/openvla) runs for the
paper's numbers: every task of the suite, 50 episodes per task from the task's fixed initial
states 0..49, 256-pixel cameras, 10 no-op steps before the first frame, the suite's step limit,
the 0.9 center crop of the fine-tunes trained with image augmentation, the image path of
`libero_utils.py` (openvla_ros/tf_image.py), the norm stats of the suite (`<suite>_no_noops`), and
one env per task seeded 0 once and reset for each episode in turn, which decides where the fixtures
stand (the bridge's `reset_rng` "openvla", openvla_ros/sim/libero_env.py).
OpenVLA-OFT's published protocol (`--protocol oft`: `experiments/robot/libero/run_libero_eval.py`
of moojink/openvla-oft) fixes the same values: 50 episodes from initial states 0..49, 256-pixel
cameras, 10 no-op steps, the same step limits, the 0.9 center crop, the same TF image path
(`resize_image_for_policy`: JPEG round trip, Lanczos to 224) for both the agentview and the wrist
camera, the `<suite>_no_noops` norm stats (its `check_unnorm_key` falls back to them) and the env
seeded 0 once per task. It differs in the model: two images, the proprio state, and an action
chunk executed open loop (8 actions per query; the bridge executes every point of the chunk it
gets, with the same gripper processing), so each protocol also fixes its `model_family`.
A run whose settings differ is still possible, but its numbers are not the published protocol's:
with an official fine-tune's key such a run is refused unless drift is allowed, and any drift is
written into the results.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from openvla_ros.sim.libero_env import MAX_STEPS

PROTOCOLS = ("openvla", "oft")  # each protocol is its model family's: protocol_settings()["model_family"]
OFFICIAL_UNNORM_KEY = re.compile(r"^libero_(spatial|object|goal|10|90)_no_noops$")
INIT_STATES_PER_TASK = 50  # every LIBERO task ships 50 fixed initial states


def protocol_settings(protocol: str, suite: str, task_count: int) -> dict[str, Any]:
    """The protocol's value of every setting it fixes, for one suite."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; expected one of {PROTOCOLS}")
    if suite not in MAX_STEPS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {sorted(MAX_STEPS)}")
    return {
        "tasks": list(range(task_count)),
        "episodes_per_task": INIT_STATES_PER_TASK,
        "camera_size": 256,
        "num_steps_wait": 10,
        "max_steps": MAX_STEPS[suite],
        "center_crop_scale": 0.9,
        "image_preprocess": "openvla",
        "unnorm_key": f"{suite}_no_noops",
        "reset_rng": "openvla",
        "seed": 0,
        "model_family": protocol,
    }


def protocol_drift(protocol: dict[str, Any], run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting whose run value differs from the protocol's: [{setting, protocol, run}].
    The norm-stats key only counts when the run's key is an official LIBERO one: other models
    have keys of their own."""
    drift = []
    for setting, expected in protocol.items():
        actual = run[setting]
        if setting == "unnorm_key" and not is_official_unnorm_key(actual):
            continue
        if actual != expected:
            drift.append({"setting": setting, "protocol": expected, "run": actual})
    return drift


def is_official_unnorm_key(key: str) -> bool:
    """Whether `key` is the norm-stats key of one of OpenVLA's (or OpenVLA-OFT's) official LIBERO fine-tunes."""
    return bool(OFFICIAL_UNNORM_KEY.match(key or ""))


def effective_unnorm_key(unnorm_key: str, model_dir: Path) -> str:
    """The key the policy will use: `unnorm_key`, or the model's only norm-stats key when it is
    empty ("" when the model has several, or none could be read: the policy reports that)."""
    if unnorm_key:
        return unnorm_key
    for name in ("manifest.json", "config.json"):  # an export's manifest, or an HF checkpoint
        path = Path(model_dir) / name
        if path.is_file():
            try:
                keys = list(json.loads(path.read_text(encoding="utf-8")).get("norm_stats") or {})
            except (OSError, ValueError, AttributeError):
                return ""
            return keys[0] if len(keys) == 1 else ""
    return ""
