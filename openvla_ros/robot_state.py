"""The robot-state input of OpenVLA-OFT: its message layout, the converter with its rejections,
and the state computed from a LIBERO observation exactly as OFT's LIBERO evaluation does. ROS-free.

**Message: `sensor_msgs/JointState`** on the `robot_state` topic, one named position per state
value. It is the standard message with a header stamp (the capture time, checked by the same
zero/future guards as camera frames, and compared with the images' stamps) and names, so a
publisher cannot silently swap or drop values: the names say which value is which, in any order.
`velocity` and `effort` are ignored (OFT takes positions only). For OFT's LIBERO checkpoints the
8 names are `LIBERO_STATE_NAMES`: end-effector position (m, LIBERO world frame), its orientation
as axis-angle (rad, the rotation vector of robosuite's `robot0_eef_quat`) and the two gripper
finger joint positions (m, `robot0_gripper_qpos`); header.frame_id is `world`.

The values stay float64: OFT normalizes the proprio state in numpy float64 before the projector
(openvla_ros/oft.py, `ChunkNormalizer.normalize_proprio`), and JointState carries float64.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from openvla_ros.input_checks import InputRejected
from openvla_ros.stamps import stamp_problem

STATE_TOPIC = "robot_state"
STATE_FRAME_ID = "world"
LIBERO_STATE_NAMES = ("eef_pos_x", "eef_pos_y", "eef_pos_z",
                      "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
                      "gripper_qpos_left", "gripper_qpos_right")


class StateRejected(InputRejected):
    """A robot-state message the policy cannot use; `problem` says which check refused it
    ("names", "length", "non_finite", or the stamp's "zero" / "future")."""

    kind = "state"

    def __init__(self, problem: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = problem


def state_names(proprio_dim: int) -> tuple[str, ...]:
    """The state names a model with `proprio_dim` values expects: LIBERO's layout for 8, else
    `state_0 .. state_{n-1}` (other platforms' layouts have no agreed names)."""
    if proprio_dim < 1:
        raise ValueError(f"proprio_dim is {proprio_dim}; a model without proprio takes no state")
    if proprio_dim == len(LIBERO_STATE_NAMES):
        return LIBERO_STATE_NAMES
    return tuple(f"state_{i}" for i in range(proprio_dim))


def state_vector(names: Sequence[str], positions: Sequence[float], stamp_ns: int, now_ns: int,
                 max_future_stamp_s: float, expected: Sequence[str] = LIBERO_STATE_NAMES) -> np.ndarray:
    """A JointState's content -> float64 [len(expected)] in `expected`'s order.

    StateRejected (naming the problem and what was expected) for names that are not exactly
    `expected` (missing, unknown or repeated), a position count other than the name count,
    non-finite values, or a zero / future stamp.
    """
    names, expected = list(names), list(expected)
    if len(positions) != len(names):
        raise StateRejected("length", f"state has {len(positions)} positions for {len(names)} names; "
                                      f"expected one position per name ({len(expected)}: {expected})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    missing = [n for n in expected if n not in names]
    unknown = [n for n in names if n not in expected]
    if repeated or missing or unknown:
        found = "; ".join(part for part in (f"repeated {repeated}" if repeated else "",
                                            f"missing {missing}" if missing else "",
                                            f"unknown {unknown}" if unknown else "") if part)
        raise StateRejected("names", f"state names do not match the model's layout ({found}); expected "
                                     f"{expected} in any order")
    by_name = dict(zip(names, positions))
    values = np.array([by_name[n] for n in expected], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = [n for n, v in zip(expected, values) if not math.isfinite(v)]
        raise StateRejected("non_finite", f"state has non-finite values for {bad}; expected finite numbers")
    problem = stamp_problem(stamp_ns, now_ns, max_future_stamp_s)
    if problem is not None:
        raise StateRejected(problem[0], f"state {problem[1]}")
    return values


def quat_to_axis_angle(quat_xyzw: Sequence[float]) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> rotation vector (axis * angle, rad), as robosuite's
    `quat2axisangle` that OFT's LIBERO evaluation uses: w clipped to [-1, 1], the angle 2 acos(w)
    (so q and -q give different vectors, exactly as there), zero below a numerically zero sine."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"quaternion must have 4 values (x, y, z, w), got shape {q.shape}")
    w = min(1.0, max(-1.0, float(q[3])))
    sine = math.sqrt(1.0 - w * w)
    if math.isclose(sine, 0.0):  # math.isclose's default: relative tolerance only, so only an exact 0
        return np.zeros(3)
    return (q[:3] * 2.0 * math.acos(w)) / sine  # this order of operations, for robosuite's exact bits


def libero_state(eef_pos: Sequence[float], eef_quat_xyzw: Sequence[float],
                 gripper_qpos: Sequence[float]) -> np.ndarray:
    """OFT's LIBERO proprio state from robosuite's observation keys `robot0_eef_pos` (world frame),
    `robot0_eef_quat` (x, y, z, w) and `robot0_gripper_qpos`: float64 [8] in LIBERO_STATE_NAMES order."""
    pos, qpos = np.asarray(eef_pos, dtype=np.float64), np.asarray(gripper_qpos, dtype=np.float64)
    if pos.shape != (3,) or qpos.shape != (2,):
        raise ValueError(f"expected eef position (3,) and gripper qpos (2,), got {pos.shape} and {qpos.shape}")
    return np.concatenate([pos, quat_to_axis_angle(eef_quat_xyzw), qpos])
