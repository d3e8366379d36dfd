"""The policy core with an OpenVLA-OFT (chunk) policy, in-process without DDS, on the real ONNX
Runtime backend over the official OFT fixture's export: pairing the frame with the latest wrist
image and robot state, the receipt, sync and age checks of those inputs (rejections, never
faults), whole chunks, and the action queue driven tick by tick (`PolicyCore.tick`, which the
node calls from its control-rate timer).

Every chunk is checked against the same export's own `predict_chunk` on the same inputs, and
every queued action against its chunk's row; the queue is reasoned about in ticks and stamps.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from openvla_ros.node_process import wait_until
from openvla_ros.nodes import policy_params
from openvla_ros.policy import load_policy
from openvla_ros.processing import center_crop
from openvla_ros.robot_state import LIBERO_STATE_NAMES
from test_oft_fixture import CASES, case_images
from test_policy_core import INSTRUCTION, WAIT_S, Harness

MS = 1_000_000
STATE_NAMES = list(LIBERO_STATE_NAMES)


def case_inputs(fixture, index: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(agentview, wrist, state) of the fixture's reference case `index`."""
    agentview, wrist = case_images(fixture, CASES[index])
    return agentview, wrist, list(CASES[index]["state"])


def predicted(policy, inputs, crop_scale: float = 1.0) -> np.ndarray:
    """The export's own chunk for (agentview, wrist, state) and the harness's instruction."""
    images = [center_crop(image, crop_scale) if crop_scale != 1.0 else image for image in inputs[:2]]
    return policy.predict_chunk(images, INSTRUCTION, inputs[2]).actions


def offer(h: Harness, inputs, stamp_ns: int, wrist_stamp_ns: int | None = None,
          state_stamp_ns: int | None = None) -> None:
    """State, wrist image, then the frame (the frame last: it is what schedules an inference)."""
    agentview, wrist, state = inputs
    h.core.offer_state(stamp_ns if state_stamp_ns is None else state_stamp_ns, STATE_NAMES, state)
    h.core.offer_wrist(0, stamp_ns if wrist_stamp_ns is None else wrist_stamp_ns, lambda max_pixels: wrist)
    h.offer(agentview, stamp_ns)


@pytest.fixture
def harness(official_oft_onnx_export):
    h = Harness(load_policy, model_dir=str(official_oft_onnx_export), mode="trigger")
    yield h
    h.close()


def test_step_publishes_the_chunk_of_the_latest_frame_and_its_paired_inputs(harness, official_oft_onnx_policy,
                                                                           official_oft_fixture):
    harness.start()
    # The second step acts on the same frame after a whole inference, which on a loaded machine can
    # outlast the default max_image_age_s: staleness is another test's subject, not this one's.
    harness.core.apply_parameters({"max_image_age_s": 3600.0})
    assert harness.core.chunk_layout.num_images == 2 and harness.core.chunk_layout.uses_proprio
    first, second = case_inputs(official_oft_fixture, 0), case_inputs(official_oft_fixture, 1)
    stamp = time.time_ns()
    offer(harness, first, stamp - MS)
    offer(harness, second, stamp)  # latest frame wins, and the latest wrist image and state with it
    assert harness.step() is None
    outcome = harness.outcomes.get_nowait()
    expected = predicted(official_oft_onnx_policy, second)
    assert outcome.action.shape == (8, 7) and not outcome.queued
    np.testing.assert_array_equal(outcome.action, expected)
    assert outcome.frame.stamp_ns == stamp and outcome.frame.wrist[0].stamp_ns == stamp
    np.testing.assert_array_equal(outcome.frame.state.value, second[2])
    # The centre crop applies to every camera, as in OFT's LIBERO evaluation.
    harness.core.apply_parameters({"center_crop_scale": 0.9})
    assert harness.step() is None
    np.testing.assert_array_equal(harness.outcomes.get_nowait().action,
                                  predicted(official_oft_onnx_policy, second, crop_scale=0.9))
    status = harness.counts()
    assert (status["wrist_images_received"], status["states_received"], status["actions_published"]) == ("2", "2", "2")
    assert status["inputs_out_of_sync"] == "0" and harness.core.status().level == "ok"


def test_missing_out_of_sync_and_stale_inputs_are_rejections(harness, official_oft_fixture):
    harness.start()
    agentview, wrist, state = inputs = case_inputs(official_oft_fixture, 2)
    harness.offer(agentview)
    assert harness.step() == "no wrist/image, robot_state received yet; the model needs ['image', 'wrist/image', " \
                             "'robot_state']"
    now = time.time_ns()
    offer(harness, inputs, now, wrist_stamp_ns=now - 30 * MS)  # sync_tolerance_s is 0.02
    failure = harness.step()
    assert failure.startswith("inputs out of sync: image is 0.030 s newer than wrist/image; sync_tolerance_s is 0.02")
    offer(harness, inputs, now, state_stamp_ns=now - 20 * MS)  # 20 ms apart: within the tolerance
    assert harness.step() is None
    # Each paired input must be fresh too, not only the frame.
    harness.core.apply_parameters({"sync_tolerance_s": 60.0, "max_image_age_s": 2.0})
    now = time.time_ns()
    offer(harness, inputs, now, wrist_stamp_ns=now - 5_000 * MS)
    assert harness.step().startswith("stale wrist/image: stamp is 5.")
    offer(harness, inputs, now, state_stamp_ns=now - 5_000 * MS)
    assert harness.step().startswith("stale robot_state: stamp is 5.")
    status = harness.counts()
    assert (status["inputs_out_of_sync"], status["wrist_images_stale"], status["states_stale"]) == ("2", "1", "1")
    assert (status["skipped"], status["errors"], status["consecutive_errors"]) == ("4", "0", "0")
    assert status["last_rejection"].startswith("sync: inputs out of sync")
    assert harness.deactivation_requests == 0 and harness.outcomes.qsize() == 1


def test_receipt_checks_reject_bad_wrist_images_and_states(harness, official_oft_fixture):
    harness.start()
    agentview, wrist, state = case_inputs(official_oft_fixture, 0)
    now = time.time_ns()
    harness.core.offer_wrist(0, 0, lambda max_pixels: wrist)
    harness.core.offer_wrist(0, now + 10**15, lambda max_pixels: wrist)  # 10^6 s ahead

    def bad_image(max_pixels):
        raise ValueError("image has 4 channels; expected 3")

    harness.core.offer_wrist(0, now, bad_image)
    harness.core.offer_state(0, STATE_NAMES, state)
    harness.core.offer_state(now + 10**15, STATE_NAMES, state)
    harness.core.offer_state(now, STATE_NAMES[::-1], state)  # names in any order are fine: stored
    harness.core.offer_state(now, STATE_NAMES[:7], state[:7])
    harness.core.offer_state(now, STATE_NAMES, [*state[:7], float("nan")])
    status = harness.counts()
    assert (status["wrist_images_rejected"], status["wrist_images_zero_stamp"],
            status["wrist_images_future_stamp"], status["wrist_images_received"]) == ("3", "1", "1", "0")
    assert (status["states_rejected"], status["states_zero_stamp"], status["states_future_stamp"],
            status["states_received"]) == ("4", "1", "1", "1")
    assert status["last_rejection"].startswith("robot state: state has non-finite values for ['gripper_qpos_right']")
    harness.offer(agentview, now)
    assert harness.step().startswith("no wrist/image received yet")  # none was stored
    assert harness.counts()["errors"] == "0"


def test_an_instruction_over_the_export_s_prompt_budget_is_rejected_on_receipt(harness):
    harness.start()
    harness.core.offer_instruction(" ".join(f"w{i}" for i in range(120)))  # < 512 characters, > the budget
    status = harness.counts()
    assert status["instructions_rejected"] == "1" and "text tokens after BOS but this export holds" in \
        status["last_rejection"]


@pytest.fixture
def queued(official_oft_onnx_export):
    """Continuous mode with the action queue, re-planning every 3 actions; frames stay fresh unless
    a test stamps them old."""
    h = Harness(load_policy, model_dir=str(official_oft_onnx_export), mode="continuous", action_output="queue",
                replan_every=3, max_image_age_s=3600.0, max_rate_hz=1000.0)
    yield h
    h.close()


def tick(h: Harness):
    """One control tick: the queued step it published, or None."""
    h.core.tick()
    return None if h.queued_steps.empty() else h.queued_steps.get_nowait()


def test_queue_pops_one_action_per_tick_and_replans_after_k(queued, official_oft_onnx_policy, official_oft_fixture):
    h = queued
    h.start()
    first, second = case_inputs(official_oft_fixture, 0), case_inputs(official_oft_fixture, 1)
    s1 = time.time_ns()
    offer(h, first, s1)
    outcome = h.outcomes.get(timeout=WAIT_S)  # the queue asked for a plan: the frame is acted on
    assert outcome.queued and outcome.frame.stamp_ns == s1
    chunk1 = outcome.action
    np.testing.assert_array_equal(chunk1, predicted(official_oft_onnx_policy, first))
    s2 = s1 + MS
    offer(h, second, s2)  # fresh, but the queue asks for no plan before 3 actions of chunk 1
    for step in (1, 2, 3):
        popped = tick(h)
        assert (popped.step, popped.stamp_ns) == (step, s1)
        np.testing.assert_array_equal(popped.action, chunk1[step - 1])
    outcome = h.outcomes.get(timeout=WAIT_S)  # now the queue asks for a plan: frame s2 is acted on
    assert outcome.frame.stamp_ns == s2
    chunk2 = outcome.action
    np.testing.assert_array_equal(chunk2, predicted(official_oft_onnx_policy, second))
    # The new chunk replaced what was left of the first; without a new frame it runs to its end.
    for step in range(1, 9):
        popped = tick(h)
        assert (popped.step, popped.stamp_ns) == (step, s2)
        np.testing.assert_array_equal(popped.action, chunk2[step - 1])
    assert tick(h) is None and tick(h) is None
    status = h.counts()
    assert (status["chunks_queued"], status["actions_published"], status["queue_ticks_empty"]) == ("2", "11", "2")
    assert status["chunks_dropped_stale"] == "0"


def test_a_chunk_whose_frame_went_stale_is_dropped(official_oft_onnx_export, official_oft_fixture):
    h = Harness(load_policy, model_dir=str(official_oft_onnx_export), mode="continuous", action_output="queue",
                max_image_age_s=2.0, max_rate_hz=1000.0)
    try:
        h.start()
        stamp = time.time_ns() - 1_000 * MS  # fresh when the inference starts, 2 s old a second later
        offer(h, case_inputs(official_oft_fixture, 0), stamp)
        assert h.outcomes.get(timeout=WAIT_S).queued
        assert wait_until(lambda: time.time_ns() - stamp > 2_000 * MS, WAIT_S)
        assert tick(h) is None  # dropped (on the push or at this tick), never executed
        status = h.counts()
        assert (status["chunks_dropped_stale"], status["queue_ticks_empty"], status["actions_published"]) == \
            ("1", "1", "0")
    finally:
        h.close()


def test_reset_new_instruction_and_deactivation_clear_the_queue(queued, official_oft_fixture):
    h = queued
    h.start()
    inputs = case_inputs(official_oft_fixture, 0)
    for forget in (h.core.reset, lambda: h.core.offer_instruction("open the drawer"), h.core.deactivate):
        offer(h, inputs, time.time_ns())
        h.outcomes.get(timeout=WAIT_S)
        assert tick(h).step == 1
        forget()
        # No frame is left to act on (taken, or forgotten by the reset): nothing is queued.
        assert tick(h) is None
    status = h.counts()
    assert (status["chunks_queued"], status["actions_published"], status["queue_ticks_empty"]) == ("3", "3", "2")
    h.core.activate()  # deactivated: the tick did nothing and counted nothing
    assert tick(h) is None and h.counts()["queue_ticks_empty"] == "3"


def test_action_output_names_its_choices():
    assert policy_params.launch_overrides({"action_output": "queue", "replan_every": "8"}) == {
        "action_output": "queue", "replan_every": 8}
    with pytest.raises(ValueError, match="action_output:=stream: action_output 'stream' is unknown; expected one "
                                         "of chunk, queue"):
        policy_params.launch_overrides({"action_output": "stream"})
