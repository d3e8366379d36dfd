"""An action chunk as one `trajectory_msgs/JointTrajectory`: one point per step.

Step k = 1 .. chunk holds the k-th action (float64 positions, labelled by `joint_names`) and
time_from_start = k / control rate (the one-action message's single point is likewise 1 / rate),
so a consumer executes step k k control periods after the source frame's stamp in the header.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint


def step_offset(step: int, control_rate_hz: float) -> Duration:
    """time_from_start of step `step` (1-based) at `control_rate_hz`, rounded to the nanosecond."""
    nanoseconds = round(step * 1e9 / control_rate_hz)
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def chunk_trajectory(actions: np.ndarray, labels: Sequence[str], stamp: Time, frame_id: str,
                     control_rate_hz: float, first_step: int = 1) -> JointTrajectory:
    """actions [chunk, action_dim] -> JointTrajectory with one point per step (see module docstring).
    `first_step`: the step of the first row, for part of a chunk (the action queue's one action
    of step k is the chunk message's point k alone)."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != len(labels):
        raise ValueError(f"actions of shape {actions.shape} do not match {len(labels)} labels")
    if control_rate_hz <= 0:
        raise ValueError(f"control_rate_hz is {control_rate_hz}; expected > 0")
    msg = JointTrajectory()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.joint_names = list(labels)
    msg.points = [JointTrajectoryPoint(positions=row.tolist(), time_from_start=step_offset(k, control_rate_hz))
                  for k, row in enumerate(actions, first_step)]
    return msg
