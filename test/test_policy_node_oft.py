"""The policy node serving OpenVLA-OFT in its own process over DDS on loopback, driven by a probe:
the official OFT fixture's export on ONNX Runtime, fed the fixture's image pairs and states on
`image`, `wrist/image` and `robot_state`.

One node (continuous mode, whole chunks on `action`) serves the first tests; the action queue runs
on a node of its own. Chunks are compared with the same export's `predict_chunk` in this process;
the queue is reasoned about by the stamps and steps of what it publishes, never by wall-clock time.
"""
from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")

from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from openvla_ros.node_process import wait_until  # noqa: E402
from openvla_ros.qos import FRAMES, SENSOR_DATA  # noqa: E402
from openvla_ros.robot_state import LIBERO_STATE_NAMES  # noqa: E402
from ros_probe import Probe  # noqa: E402
from test_policy_core_oft import case_inputs, predicted  # noqa: E402
from test_policy_node import INSTRUCTION, LABELS, NODE, PolicyNodeHarness, image_msg, serving, start_node  # noqa: E402

WAIT_S = 120.0  # a bound for a failing test on a loaded machine, not a timing assertion
CONTROL_RATE_HZ = 20.0
# The queue node ticks slowly, so that a frame sent just after its first chunk arrives is usually
# waiting before the third step (the re-plan), not after the chunk ran out; the assertions hold
# either way.
QUEUE_RATE_HZ = 1.0


class OFTHarness(PolicyNodeHarness):
    """A policy node serving OFT, and a probe that also publishes its wrist camera and state.
    `reliable`: the probe's camera and state writers are reliable (for a node whose readers the
    qos_overrides parameters make reliable), so nothing published after they matched is lost."""

    def __init__(self, probe: Probe, node, node_path: str = NODE, reliable: bool = False) -> None:
        qos = FRAMES if reliable else SENSOR_DATA
        self.inputs = {topic: probe.publisher(kind, topic, qos)
                       for topic, kind in (("robot_state", JointState), ("wrist/image", Image), ("image", Image))}
        super().__init__(probe, node, node_path)  # takes the `image` writer made here

    def publish(self, inputs, stamp, wrist_stamp=None, state_stamp=None, names=LIBERO_STATE_NAMES,
                frame: bool = True) -> None:
        """State, wrist image, then (unless not `frame`) the frame; each stamped `stamp` unless given its own."""
        agentview, wrist, state = inputs
        msg = JointState(name=list(names), position=[float(v) for v in state])
        msg.header.stamp = state_stamp or stamp
        self.inputs["robot_state"].publish(msg)
        self.inputs["wrist/image"].publish(image_msg(wrist, wrist_stamp or stamp))
        if frame:
            self.inputs["image"].publish(image_msg(agentview, stamp))

    def send_and_wait_chunk(self, inputs, timeout: float = 30.0) -> JointTrajectory | None:
        """Publish the inputs and return the action answering them; re-sent with a new stamp while
        none comes (best-effort QoS, readers not matched yet, inputs that arrived out of sync)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp = self.now()
            self.publish(inputs, stamp)
            if wait_until(lambda: self.action_for(stamp) is not None, 2.0):
                return self.action_for(stamp)
        return None

    def counter(self, name: str) -> int:
        return int(self.diagnostics()[name])

    def publish_companions_first(self, inputs, stamp) -> None:
        """State and wrist image, and only once the node has stored both, the frame: it then pairs
        them whatever order DDS would have delivered them in (reliable writers only)."""
        before = self.diagnostics()

        def stored() -> bool:
            status = self.diagnostics()
            return all(int(status[name]) > int(before[name]) for name in ("states_received", "wrist_images_received"))

        self.publish(inputs, stamp, frame=False)
        assert self.node.wait_until(stored, WAIT_S), self.diagnostics()
        self.inputs["image"].publish(image_msg(inputs[0], stamp))


def expected_offsets(steps, rate_hz: float = CONTROL_RATE_HZ) -> list[tuple[int, int]]:
    """(sec, nanosec) of time_from_start for `steps` at `rate_hz`."""
    return [divmod(round(k * 1e9 / rate_hz), 10**9) for k in steps]


def offsets(msg: JointTrajectory) -> list[tuple[int, int]]:
    return [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points]


@pytest.fixture(scope="module")
def oft(official_oft_onnx_export, tmp_path_factory):
    logs = tmp_path_factory.mktemp("policy_node_oft")
    with Probe("oft_probe") as probe, serving(probe, start_node(official_oft_onnx_export, "onnxruntime", logs,
                                                                control_rate_hz=CONTROL_RATE_HZ), OFTHarness) as h:
        yield h


def test_action_carries_the_chunk_predict_chunk_gives(oft, official_oft_onnx_policy, official_oft_fixture):
    inputs = case_inputs(official_oft_fixture, 0)
    action = oft.send_and_wait_chunk(inputs)
    assert action is not None, oft.node.log_text()[-3000:]
    expected = predicted(official_oft_onnx_policy, inputs)
    assert action.joint_names == LABELS and action.header.frame_id == "base_link"
    assert [list(p.positions) for p in action.points] == expected.tolist()  # exact, through ONNX Runtime
    assert offsets(action) == expected_offsets(range(1, 9))  # step k at k / control_rate_hz
    stamp = action.header.stamp
    assert wait_until(lambda: any(m.header.stamp == stamp for m in oft.probe.messages("action/twist")), 10.0)
    twist = next(m.twist for m in oft.probe.messages("action/twist") if m.header.stamp == stamp)
    assert [twist.linear.x, twist.linear.y, twist.linear.z, twist.angular.x, twist.angular.y, twist.angular.z] == \
        expected[0, :6].tolist()  # the chunk's first step
    assert any(m.data == expected[0, 6] for m in oft.probe.messages("action/gripper"))
    status = oft.diagnostics()
    assert status["torch_imported"] == "False" and int(status["wrist_images_received"]) >= 1
    assert int(status["states_received"]) >= 1


def _rejected(h: OFTHarness, inputs, counter: str, reason: str, **stamps) -> None:
    """Publish inputs (stamps relative to now, in s) until `counter` grows with `reason` as the skip
    reason; no action may answer them."""
    before = h.counter(counter)
    sent = []

    def seen() -> bool:
        now = h.probe.node.get_clock().now()
        stamp = now.to_msg()
        h.publish(inputs, stamp, **{k: (now + rclpy.duration.Duration(seconds=v)).to_msg() for k, v in stamps.items()})
        sent.append(stamp)
        status = h.diagnostics()
        return int(status[counter]) > before and reason in status["last_skip_reason"]

    assert h.node.wait_until(seen, WAIT_S, interval=0.2), h.diagnostics()
    assert all(h.action_for(stamp) is None for stamp in sent)


def test_missing_out_of_sync_and_stale_inputs_are_rejected_and_the_node_acts_on(oft, official_oft_fixture):
    inputs = case_inputs(official_oft_fixture, 1)
    assert oft.probe.call(Trigger, f"{NODE}/reset", Trigger.Request()).success  # forgets the wrist image, state
    assert oft.set(max_image_age_s=2.0)[0].successful
    try:
        before = oft.diagnostics()
        # frames and states, but no wrist image
        missing = oft.counter("inputs_out_of_sync")

        def no_wrist() -> bool:
            stamp = oft.now()
            msg = JointState(name=list(LIBERO_STATE_NAMES), position=[float(v) for v in inputs[2]])
            msg.header.stamp = stamp
            oft.inputs["robot_state"].publish(msg)
            oft.inputs["image"].publish(image_msg(inputs[0], stamp))
            status = oft.diagnostics()
            return int(status["inputs_out_of_sync"]) > missing and "no wrist/image" in status["last_skip_reason"]

        assert oft.node.wait_until(no_wrist, WAIT_S, interval=0.2), oft.diagnostics()
        _rejected(oft, inputs, "inputs_out_of_sync", "inputs out of sync", wrist_stamp=-0.3)
        assert oft.set(sync_tolerance_s=60.0)[0].successful
        _rejected(oft, inputs, "wrist_images_stale", "stale wrist/image", wrist_stamp=-5.0)
        _rejected(oft, inputs, "states_stale", "stale robot_state", state_stamp=-5.0)
        # a state whose names are not the model's layout is rejected on receipt, never stored
        rejected = oft.counter("states_rejected")
        oft.publish(inputs, oft.now(), names=[*LIBERO_STATE_NAMES[:7], "gripper"])
        assert oft.node.wait_until(lambda: oft.counter("states_rejected") > rejected, WAIT_S, interval=0.2)
        status = oft.diagnostics()
        assert status["last_rejection"].startswith("robot state: state names do not match")
        assert status["state"] == "active" and status["errors"] == before["errors"] == "0"
    finally:
        assert all(r.successful for r in oft.set(max_image_age_s=0.5, sync_tolerance_s=0.02))
    assert oft.send_and_wait_chunk(inputs) is not None


@pytest.fixture(scope="module")
def queue_node(official_oft_onnx_export, tmp_path_factory):
    """Continuous mode with action_output queue, re-planning every 3 actions; reliable readers and
    frames that stay fresh, so every published input is acted on exactly as the test reasons."""
    logs = tmp_path_factory.mktemp("policy_node_oft_queue")
    reliable = {f"qos_overrides./queue/{topic}.subscription.reliability": "reliable"
                for topic in ("image", "wrist/image", "robot_state")}
    with Probe("queue_probe", namespace="queue") as probe, serving(
            probe, start_node(official_oft_onnx_export, "onnxruntime", logs, namespace="queue",
                              action_output="queue", replan_every=3, control_rate_hz=QUEUE_RATE_HZ,
                              max_image_age_s=60.0, **reliable),
            lambda p, n: OFTHarness(p, n, "/queue/policy_node", reliable=True)) as h:
        matched = lambda: all(w.get_subscription_count() > 0 for w in h.inputs.values())  # noqa: E731
        assert h.node.wait_until(matched, WAIT_S), "the node's input readers never matched"
        assert h.node.wait_until(lambda: h.diagnostics()["instruction"] == INSTRUCTION, WAIT_S)
        yield h


def _steps(h: OFTHarness, stamp) -> list[JointTrajectory]:
    return [m for m in h.probe.messages("action") if m.header.stamp == stamp]


def test_queue_emits_one_action_per_tick_and_replans_after_k(queue_node, official_oft_onnx_policy,
                                                            official_oft_fixture):
    h = queue_node
    first, second = case_inputs(official_oft_fixture, 0), case_inputs(official_oft_fixture, 2)
    s1 = h.now()
    h.publish_companions_first(first, s1)
    assert h.node.wait_until(lambda: _steps(h, s1), WAIT_S), h.diagnostics()
    s2 = h.now()
    h.publish_companions_first(second, s2)  # acted on only once the queue asks for a plan (after 3 steps)
    assert h.node.wait_until(lambda: len(_steps(h, s2)) == 8, WAIT_S), h.diagnostics()
    empty = h.counter("queue_ticks_empty")
    assert h.node.wait_until(lambda: h.counter("queue_ticks_empty") > empty, WAIT_S)  # chunk 2 used up
    messages = h.probe.messages("action")
    assert {(m.header.stamp.sec, m.header.stamp.nanosec) for m in messages} == {
        (s.sec, s.nanosec) for s in (s1, s2)}  # nothing else: one chunk per frame
    from_first = _steps(h, s1)
    assert messages[:len(from_first)] == from_first  # chunk 1's steps, then chunk 2's
    executed = len(from_first)
    assert 3 <= executed <= 8  # no plan before 3 steps; the rest ran until chunk 2 replaced them
    for stamp, inputs, count in ((s1, first, executed), (s2, second, 8)):
        chunk = predicted(official_oft_onnx_policy, inputs)
        steps = _steps(h, stamp)
        assert all(len(m.points) == 1 and m.joint_names == LABELS for m in steps)
        assert [offsets(m)[0] for m in steps] == expected_offsets(range(1, count + 1), QUEUE_RATE_HZ)  # in order
        assert [list(m.points[0].positions) for m in steps] == chunk[:count].tolist()
        twists = [m.twist for m in h.probe.messages("action/twist") if m.header.stamp == stamp]
        assert [t.linear.x for t in twists] == chunk[:count, 0].tolist()  # action/twist follows the queue
    status = h.diagnostics()
    assert (status["chunks_queued"], status["actions_published"]) == ("2", str(executed + 8))
    assert status["chunks_dropped_stale"] == "0" and status["errors"] == "0"


def test_trigger_mode_answers_a_step_with_the_whole_chunk(oft, official_oft_fixture):
    """In trigger mode (lockstep) ~/step publishes the whole chunk, whatever action_output says."""
    from lifecycle_msgs.msg import Transition

    assert oft.change_state(Transition.TRANSITION_DEACTIVATE)
    assert all(r.successful for r in oft.set(mode="trigger", action_output="queue", max_image_age_s=30.0))
    assert oft.change_state(Transition.TRANSITION_ACTIVATE)
    try:
        inputs, stamp = case_inputs(official_oft_fixture, 2), oft.now()

        def stepped() -> bool:
            # Activation forgot every earlier input: a step succeeds only on these, sent again (best
            # effort) with the same stamp until they have all arrived.
            oft.publish(inputs, stamp)
            return oft.probe.call(Trigger, f"{NODE}/step", Trigger.Request()).success

        assert oft.node.wait_until(stepped, WAIT_S, interval=0.2), oft.diagnostics()
        action = oft.action_for(stamp)
        assert action is not None and len(action.points) == 8
    finally:
        oft.change_state(Transition.TRANSITION_DEACTIVATE)
        oft.set(mode="continuous", action_output="chunk", max_image_age_s=0.5)
        assert oft.change_state(Transition.TRANSITION_ACTIVATE)
