"""The demo model's instructions, the action each one should produce, and the norm stats that
turn those actions into robosuite OSC_POSE deltas.

Targets live in OpenVLA's normalized action space (7-D: xyz delta, roll/pitch/yaw delta, gripper).
A motion instruction is +-1 on one position axis of the LIBERO robot base frame (+x forward,
+y left, +z up), 0 elsewhere, gripper open. The gripper follows OpenVLA's LIBERO convention: it is
not normalized (mask false), 1 = open, 0 = closed. With q01/q99 = -+0.9375 on xyz (LIBERO's
extremes) a motion step is a ~0.93 OSC delta, about 1.2 cm of end-effector travel per control step.
"""
from __future__ import annotations

import numpy as np

from openvla_ros.actions import ActionDecoder

DEMO_UNNORM_KEY = "libero_demo"
ACTION_DIM = 7
POSITION_BOUND = 0.9375
ROTATION_BOUND = 0.375
GRIPPER_OPEN = 1.0
GRIPPER_CLOSED = 0.0

# direction word -> (axis in the base frame, sign)
MOTIONS: dict[str, tuple[int, float]] = {
    "up": (2, 1.0),
    "down": (2, -1.0),
    "left": (1, 1.0),
    "right": (1, -1.0),
    "forward": (0, 1.0),
    "backward": (0, -1.0),
}


def _motion_target(axis: int, sign: float) -> tuple[float, ...]:
    target = [0.0] * ACTION_DIM
    target[axis] = sign
    target[-1] = GRIPPER_OPEN
    return tuple(target)


def _gripper_target(value: float) -> tuple[float, ...]:
    return (0.0,) * (ACTION_DIM - 1) + (value,)


# instruction -> normalized target; the order is the demo's schedule (every motion is undone next).
INSTRUCTIONS: dict[str, tuple[float, ...]] = {
    **{f"move the gripper {word}": _motion_target(axis, sign) for word, (axis, sign) in MOTIONS.items()},
    "close the gripper": _gripper_target(GRIPPER_CLOSED),
    "open the gripper": _gripper_target(GRIPPER_OPEN),
}


def normalized_target(instruction: str) -> np.ndarray:
    """The normalized 7-D target of a demo instruction; ValueError for any other text."""
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"not a demo instruction: {instruction!r}; expected one of {list(INSTRUCTIONS)}")
    return np.array(INSTRUCTIONS[instruction], dtype=np.float64)


def demo_norm_stats() -> dict:
    """The `norm_stats` entry (config.json format) of DEMO_UNNORM_KEY.

    q01/q99 are the normalization bounds; mean/std describe the demo's own target actions.
    """
    low = np.array([-POSITION_BOUND] * 3 + [-ROTATION_BOUND] * 3 + [GRIPPER_CLOSED])
    high = np.array([POSITION_BOUND] * 3 + [ROTATION_BOUND] * 3 + [GRIPPER_OPEN])
    mask = [True] * (ACTION_DIM - 1) + [False]
    targets = np.array(list(INSTRUCTIONS.values()))
    actions = np.where(mask, 0.5 * (targets + 1.0) * (high - low) + low, targets)
    return {
        "action": {
            "q01": low.tolist(),
            "q99": high.tolist(),
            "min": low.tolist(),
            "max": high.tolist(),
            "mean": actions.mean(axis=0).round(6).tolist(),
            "std": actions.std(axis=0).round(6).tolist(),
            "mask": mask,
        }
    }


def action_token_ids(normalized: np.ndarray, decoder: ActionDecoder) -> list[int]:
    """OpenVLA's ActionTokenizer rule: clip to [-1, 1], find the bin with np.digitize over
    n_bins uniform edges, token id = end of the unpadded text vocab - bin."""
    values = np.asarray(normalized, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"normalized action must be a finite 1-D array, got {values!r}")
    edges = np.linspace(-1.0, 1.0, decoder.n_bins)
    bins = np.digitize(np.clip(values, -1.0, 1.0), edges)
    return [int(decoder.vocab_end - b) for b in bins]
