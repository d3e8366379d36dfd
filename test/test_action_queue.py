"""The chunk action queue (per-tick execution, re-planning, stale chunks) and the chunk trajectory message."""
from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time

from openvla_ros.action_queue import ActionQueue
from openvla_ros.nodes.chunk_message import chunk_trajectory, step_offset

MS = 1_000_000


def _chunk(first: float, length: int = 8, dim: int = 7) -> np.ndarray:
    return first + np.arange(length * dim, dtype=np.float64).reshape(length, dim)


def test_open_loop_executes_the_whole_chunk_then_asks_for_a_plan():
    queue = ActionQueue(replan_every=8, max_age_ns=1000 * MS)
    assert queue.needs_plan and queue.pop(0) is None
    chunk = _chunk(0.0)
    assert queue.push(chunk, source_stamp_ns=0, now_ns=10 * MS)
    for k in range(8):
        assert not queue.needs_plan
        np.testing.assert_array_equal(queue.pop((20 + 50 * k) * MS), chunk[k])
    assert queue.needs_plan and queue.remaining == 0 and queue.pop(500 * MS) is None


def test_replanning_every_k_steps_keeps_executing_until_the_new_chunk_arrives():
    queue = ActionQueue(replan_every=3, max_age_ns=1000 * MS)
    first, second = _chunk(0.0), _chunk(1000.0)
    queue.push(first, 0, 0)
    for k in range(3):
        np.testing.assert_array_equal(queue.pop(k * MS), first[k])
    assert queue.needs_plan
    np.testing.assert_array_equal(queue.pop(4 * MS), first[3])  # the plan is late: the remainder runs on
    assert (queue.executed, queue.source_stamp_ns) == (4, 0)
    queue.push(second, source_stamp_ns=3 * MS, now_ns=5 * MS)
    assert not queue.needs_plan and queue.remaining == 8 and queue.executed == 0
    np.testing.assert_array_equal(queue.pop(6 * MS), second[0])
    assert (queue.executed, queue.source_stamp_ns) == (1, 3 * MS)  # the popped action: step 1 of frame 3 ms
    queue.clear()
    assert (queue.executed, queue.source_stamp_ns) == (0, None)


def test_a_chunk_from_a_stale_frame_is_dropped():
    queue = ActionQueue(replan_every=8, max_age_ns=200 * MS)
    assert not queue.push(_chunk(0.0), source_stamp_ns=0, now_ns=201 * MS)
    assert queue.dropped_stale == 1 and queue.needs_plan
    assert queue.push(_chunk(0.0), source_stamp_ns=0, now_ns=100 * MS)
    assert queue.pop(150 * MS) is not None
    assert queue.pop(250 * MS) is None  # went stale while executing
    assert queue.dropped_stale == 2 and queue.needs_plan


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="replan_every is 0"):
        ActionQueue(replan_every=0, max_age_ns=MS)
    with pytest.raises(ValueError, match=r"\[chunk >= 1, action_dim\]"):
        ActionQueue(8, MS).push(np.zeros(7), 0, 0)


def test_chunk_trajectory_has_one_point_per_step_at_k_over_the_rate():
    chunk = _chunk(0.0)
    labels = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    msg = chunk_trajectory(chunk, labels, Time(sec=12, nanosec=5), "tool0", control_rate_hz=20.0)
    assert msg.header.frame_id == "tool0" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 5)
    assert list(msg.joint_names) == labels and len(msg.points) == 8
    for k, point in enumerate(msg.points, 1):
        assert list(point.positions) == chunk[k - 1].tolist()
        assert point.time_from_start.sec * 10**9 + point.time_from_start.nanosec == k * 50 * MS
    assert (step_offset(30, 15.0).sec, step_offset(30, 15.0).nanosec) == (2, 0)
    # part of a chunk (the action queue's step 3 alone) is that chunk's point 3
    alone = chunk_trajectory(chunk[2:3], labels, Time(sec=12, nanosec=5), "tool0", 20.0, first_step=3)
    assert alone.points == [msg.points[2]]
    with pytest.raises(ValueError, match="do not match 3 labels"):
        chunk_trajectory(chunk, labels[:3], Time(), "tool0", 20.0)
