"""Backend faults injected into the real backend of a running policy node: an exception
mid-inference, and a hang. Only faults count toward max_consecutive_errors; the node keeps
answering its services while the backend hangs, and a timed-out inference's late result is
discarded.

The node is the real policy node in its own process (test/ros_scripts/fault_injecting_policy_node.py
calls its main with a loader that wraps the real ONNX Runtime graph runtime); faults are switched on
and off by files in a directory the wrapper looks at on every decoder graph run.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from openvla_ros.node_process import NodeProcess, wait_until  # noqa: E402
from ros_probe import Probe  # noqa: E402
from test_policy_node import INSTRUCTION, PolicyNodeHarness, image_msg, make_image, wait_active  # noqa: E402

NAMESPACE = "faults"
FAULT_SCRIPT = Path(__file__).parent / "ros_scripts" / "fault_injecting_policy_node.py"


def start_fault_injecting_node(model_dir: Path, fault_dir: Path, log_dir: Path, **params) -> NodeProcess:
    node = NodeProcess("policy_node", namespace=NAMESPACE, env={"OPENVLA_FAULT_DIR": str(fault_dir)},
                       log_path=log_dir / "policy_node.log", params={
                           "backend": "onnxruntime", "model_dir": str(model_dir), "autostart": True,
                           "max_rate_hz": 50.0, **params})
    # Same --ros-args as the policy node; the wrapper's entry point instead of the node's module.
    node.command = [sys.executable, str(FAULT_SCRIPT), *node.command[node.command.index("--ros-args"):]]
    return node.start()


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def node(tiny_onnx_export, faults, tmp_path_factory):
    with Probe("faults_probe", namespace=NAMESPACE) as probe:
        process = start_fault_injecting_node(tiny_onnx_export, faults, tmp_path_factory.mktemp("faults_logs"),
                                             max_consecutive_errors=2)
        try:
            h = PolicyNodeHarness(probe, process, f"/{NAMESPACE}/policy_node")
            wait_active(h)
            h.instruction.publish(String(data=INSTRUCTION))
            assert h.send_and_wait_action(image_msg(make_image(40), h.now())) is not None, process.log_text()[-3000:]
            yield h
        finally:
            for name in ("raise", "hang"):
                (faults / name).unlink(missing_ok=True)
            process.stop()


@contextmanager
def trigger_mode(h: PolicyNodeHarness, **params):
    """Trigger mode (one inference per ~/step: faults counted exactly), with a frame in hand."""
    h.change_state(Transition.TRANSITION_DEACTIVATE)
    assert all(r.successful for r in h.set(mode="trigger", max_image_age_s=60.0, **params))
    assert h.change_state(Transition.TRANSITION_ACTIVATE)
    try:
        yield feed_frame(h)
    finally:
        h.change_state(Transition.TRANSITION_DEACTIVATE)
        h.set(mode="continuous", max_image_age_s=0.5, inference_timeout_s=10.0, max_consecutive_errors=2)
        assert h.change_state(Transition.TRANSITION_ACTIVATE)


def feed_frame(h: PolicyNodeHarness):
    """Send a frame until the node has it (activation forgets the last one); returns its stamp."""
    received = int(h.diagnostics()["frames_received"])
    stamp = h.now()
    while not wait_until(lambda: int(h.diagnostics()["frames_received"]) > received, 2.0):
        stamp = h.now()
        h.images.publish(image_msg(make_image(60), stamp))
    return stamp


def step(h: PolicyNodeHarness) -> Trigger.Response:
    return h.probe.call(Trigger, f"{h.node_path}/step", Trigger.Request(), timeout=60.0)


def test_backend_raising_mid_inference_deactivates_after_max_consecutive_errors(node, faults):
    with trigger_mode(node) as stamp:
        errors = int(node.diagnostics()["errors"])
        (faults / "raise").touch()
        try:
            first, second = step(node), step(node)
            status = node.diagnostics()
            third = step(node)
        finally:
            (faults / "raise").unlink()
        for response in (first, second):
            assert not response.success and "injected backend fault in vla_llm" in response.message
        assert status["state"] == "inactive" and node.node.running()  # max_consecutive_errors = 2
        assert int(status["errors"]) == errors + 2 and "injected backend fault" in status["last_error"]
        assert not third.success and "not active" in third.message
        assert node.action_for(stamp) is None
        assert node.change_state(Transition.TRANSITION_ACTIVATE)
        feed_frame(node)
        response = step(node)
        assert response.success, response.message
        assert node.diagnostics()["consecutive_errors"] == "0"


def test_input_rejections_between_faults_neither_count_nor_reset(node, faults):
    """fault, rejected instruction, rejected frame, fault: two in a row, one short of deactivating
    (max_consecutive_errors = 3 here); then a good inference resets the count."""
    with trigger_mode(node, max_consecutive_errors=3):
        (faults / "raise").touch()
        try:
            assert not step(node).success
            rejected = int(node.diagnostics()["instructions_rejected"])
            node.instruction.publish(String(data=" ".join(["pick up the bowl and put it in the basket"] * 6)))
            assert wait_until(lambda: int(node.diagnostics()["instructions_rejected"]) == rejected + 1, 20.0)
            response = step(node)  # no instruction now: a skip with the reason, no inference
            assert not response.success and "rejected" in response.message
            node.instruction.publish(String(data=INSTRUCTION))
            assert wait_until(lambda: node.diagnostics()["instruction"] == INSTRUCTION, 20.0)
            frames_rejected = int(node.diagnostics()["frames_rejected"])
            while not wait_until(lambda: int(node.diagnostics()["frames_rejected"]) > frames_rejected, 2.0):
                node.images.publish(image_msg(make_image(61), rclpy.time.Time().to_msg()))  # zero stamp
            assert node.diagnostics()["consecutive_errors"] == "1"
            assert not step(node).success
        finally:
            (faults / "raise").unlink()
        status = node.diagnostics()
        assert status["state"] == "active" and status["consecutive_errors"] == "2", status
        response = step(node)
        assert response.success, response.message
        assert node.diagnostics()["consecutive_errors"] == "0"


def test_hung_backend_times_out_keeps_serving_and_discards_the_late_result(node, faults):
    with trigger_mode(node, inference_timeout_s=1.0, max_consecutive_errors=5) as stamp:
        (faults / "hang").touch()
        try:
            response = step(node)  # answered once inference_timeout_s has passed, not when the backend returns
            assert not response.success and "inference_timeout_s = 1 s" in response.message, response.message
            assert wait_until(lambda: (faults / "hung").exists(), 20.0)  # the backend is inside the decoder run
            # Services keep answering while the backend hangs.
            busy = step(node)
            assert not busy.success and "still running an earlier inference" in busy.message, busy.message
            assert node.probe.call(SetBool, f"{node.node_path}/enable", SetBool.Request(data=True)).success
            state = node.probe.call(GetState, f"{node.node_path}/get_state", GetState.Request()).current_state
            assert state.label == "active"
            assert node.set(inference_timeout_s=60.0)[0].successful
            status = node.diagnostics()
            assert status["inference_timeouts"] == "1" and status["consecutive_errors"] == "2"  # timeout, busy
            assert "still running an earlier inference that timed out" in status["last_error"]
            assert status["late_results_discarded"] == "0" and (faults / "hung").exists()
        finally:
            (faults / "hang").unlink()
        # The backend returns: its result is discarded, never published.
        assert wait_until(lambda: node.diagnostics()["late_results_discarded"] == "1", 20.0)
        assert node.action_for(stamp) is None
        response = step(node)
        assert response.success, response.message
        assert node.action_for(stamp) is not None  # the same frame, answered by a new inference
        assert node.diagnostics()["consecutive_errors"] == "0"
