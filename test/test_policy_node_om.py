"""The policy node with `backend: om` in its own process over DDS, on the pyACL contract double
(an `acl.py` shim first on the node's PYTHONPATH, see om_stand_in.py): actions equal to the ONNX
Runtime backend's for the same frame, before and after a lifecycle cleanup -> configure (pyACL is
initialized once per process, the context bound on the inference thread)."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy")

from lifecycle_msgs.msg import Transition  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from om_stand_in import shim_env  # noqa: E402
from openvla_ros.node_process import NodeProcess  # noqa: E402
from ros_probe import Probe  # noqa: E402
from test_policy_node import INSTRUCTION, LABELS, PolicyNodeHarness, image_msg, make_image, predict_cli, wait_active  # noqa: E402


def test_policy_node_om_backend_through_cleanup_and_configure(tiny_om_export, tiny_onnx_export, tmp_path):
    image = make_image(4)
    expected = predict_cli("onnxruntime", tiny_onnx_export, image, INSTRUCTION, tmp_path)
    node = NodeProcess("policy_node", params={"backend": "om", "model_dir": str(tiny_om_export), "autostart": True,
                                              "max_rate_hz": 50.0},
                       env=shim_env(tmp_path / "shim"), log_path=tmp_path / "policy_node.log").start()
    try:
        with Probe() as probe:
            harness = PolicyNodeHarness(probe, node)
            wait_active(harness)
            assert harness.diagnostics()["backend"] == "om"
            harness.instruction.publish(String(data=INSTRUCTION))
            for cycle in range(2):
                action = harness.send_and_wait_action(image_msg(image, harness.now()))
                assert action is not None, node.log_text()[-3000:]
                assert action.joint_names == LABELS
                assert list(action.points[0].positions) == expected, f"cycle {cycle}"
                if cycle == 0:
                    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                        assert harness.change_state(transition), (transition, node.log_text()[-3000:])
                    wait_active(harness)
    finally:
        node.stop()
    assert "pyACL" not in node.log_text(), node.log_text()[-3000:]  # no pyACL call failed
