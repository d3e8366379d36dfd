"""OFT's robot-state input: the JointState layout and its rejections, the LIBERO state computed as
OFT's evaluation does (against robosuite's own quat2axisangle), and the inputs' sync check."""
from __future__ import annotations

import math

import numpy as np
import pytest

from openvla_ros.input_checks import InputRejected
from openvla_ros.input_sync import InputsOutOfSync, check_inputs_in_sync
from openvla_ros.robot_state import (LIBERO_STATE_NAMES, StateRejected, libero_state, quat_to_axis_angle,
                                     state_names, state_vector)

NOW = 1_700_000_000 * 10**9
STATE = [0.1, -0.2, 1.05, 3.0, -0.5, 0.25, 0.039, -0.038]


def test_state_in_the_models_order_whatever_the_messages_order():
    values = state_vector(LIBERO_STATE_NAMES, STATE, NOW - 10**6, NOW, 0.5)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, STATE)
    order = [5, 2, 7, 0, 3, 1, 6, 4]
    shuffled = state_vector([LIBERO_STATE_NAMES[i] for i in order], [STATE[i] for i in order], NOW, NOW, 0.5)
    np.testing.assert_array_equal(shuffled, STATE)


@pytest.mark.parametrize("names, positions, problem, says", [
    (LIBERO_STATE_NAMES[:7], STATE[:7], "names", "missing ['gripper_qpos_right']"),
    (LIBERO_STATE_NAMES[:7] + ("gripper",), STATE, "names", "unknown ['gripper']"),
    (LIBERO_STATE_NAMES[:7] + ("eef_pos_x",), STATE, "names", "repeated ['eef_pos_x']"),
    (LIBERO_STATE_NAMES, STATE[:7], "length", "7 positions for 8 names"),
    ((), (), "names", "missing"),
    (LIBERO_STATE_NAMES, STATE[:3] + [math.nan] + STATE[4:], "non_finite", "['eef_axis_angle_x']"),
    (LIBERO_STATE_NAMES, STATE[:7] + [math.inf], "non_finite", "['gripper_qpos_right']"),
])
def test_bad_state_messages_are_rejected_with_the_reason(names, positions, problem, says):
    with pytest.raises(StateRejected) as info:
        state_vector(names, positions, NOW, NOW, 0.5)
    assert info.value.problem == problem and says in str(info.value)
    assert isinstance(info.value, InputRejected) and info.value.kind == "state"
    if problem == "names":
        assert str(list(LIBERO_STATE_NAMES)) in str(info.value)  # says what was expected


def test_zero_and_future_stamps_are_rejected():
    with pytest.raises(StateRejected) as zero:
        state_vector(LIBERO_STATE_NAMES, STATE, 0, NOW, 0.5)
    assert zero.value.problem == "zero" and "never set" in str(zero.value)
    with pytest.raises(StateRejected) as future:
        state_vector(LIBERO_STATE_NAMES, STATE, NOW + 600 * 10**6, NOW, 0.5)
    assert future.value.problem == "future" and "max_future_stamp_s" in str(future.value)
    state_vector(LIBERO_STATE_NAMES, STATE, NOW + 400 * 10**6, NOW, 0.5)  # a small lead is allowed


def test_state_names_per_proprio_dim():
    assert state_names(8) == LIBERO_STATE_NAMES
    assert state_names(3) == ("state_0", "state_1", "state_2")
    with pytest.raises(ValueError, match="takes no state"):
        state_names(0)


def test_axis_angle_is_robosuites_quat2axisangle_bit_for_bit():
    transform_utils = pytest.importorskip("robosuite.utils.transform_utils")
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(200, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.concatenate([quats, [[0, 0, 0, 1.0], [0, 0, 0, -1.0], [1.0, 0, 0, 0], [0, 0, 0, 1.0 + 1e-12]]])
    for q in quats:
        np.testing.assert_array_equal(quat_to_axis_angle(q), transform_utils.quat2axisangle(q.copy()))


def test_axis_angle_is_the_rotation_vector():
    # a rotation of 0.7 rad about the unit axis (2, -1, 2) / 3
    axis, angle = np.array([2.0, -1.0, 2.0]) / 3.0, 0.7
    q = np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])
    np.testing.assert_allclose(quat_to_axis_angle(q), axis * angle, atol=1e-12)
    np.testing.assert_array_equal(quat_to_axis_angle([0, 0, 0, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="4 values"):
        quat_to_axis_angle([0, 0, 1.0])


def test_libero_state_is_position_axis_angle_fingers():
    state = libero_state([0.1, 0.2, 0.3], [0.0, 0.0, math.sin(0.25), math.cos(0.25)], [0.04, -0.04])
    np.testing.assert_allclose(state, [0.1, 0.2, 0.3, 0.0, 0.0, 0.5, 0.04, -0.04], atol=1e-15)
    with pytest.raises(ValueError, match="gripper qpos"):
        libero_state([0.1, 0.2, 0.3], [0, 0, 0, 1.0], [0.04])


def test_inputs_within_the_tolerance_pass_and_others_are_refused_naming_the_pair():
    ms = 10**6
    check_inputs_in_sync({"image": NOW, "wrist/image": NOW + 20 * ms, "robot_state": NOW - 10 * ms}, 0.03)
    check_inputs_in_sync({"image": NOW, "robot_state": NOW}, 0.0)
    with pytest.raises(InputsOutOfSync) as info:
        check_inputs_in_sync({"image": NOW, "wrist/image": NOW + 20 * ms, "robot_state": NOW - 20 * ms}, 0.03)
    message = str(info.value)
    assert "wrist/image is 0.040 s newer than robot_state" in message and "sync_tolerance_s is 0.03" in message
    assert isinstance(info.value, InputRejected) and info.value.kind == "sync"


def test_an_input_never_received_is_refused_by_name():
    with pytest.raises(InputsOutOfSync, match=r"no wrist/image received yet; the model needs \['image', 'wrist/image'"):
        check_inputs_in_sync({"image": NOW, "wrist/image": None, "robot_state": NOW}, 0.05)
    with pytest.raises(ValueError, match="expected >= 0"):
        check_inputs_in_sync({"image": NOW}, -1.0)
