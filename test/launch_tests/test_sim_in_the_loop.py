"""Closed loop through the installed bring-up, `sim_in_the_loop.launch.py` found through the ament
index: the LIBERO bridge (lockstep, a ~/step call per frame) and the policy node (ONNX Runtime, the
demo model, trigger mode) run one short episode to its end. The policy listens to
`demo/instruction` (the demo model knows "move the gripper up", not LIBERO's task language), so the
end effector has to rise. After shutdown both nodes must have exited with 0.

Collected by the project's pytest (launch_testing's plugin); alone: `launch_test` on this file.
"""
from __future__ import annotations

import time
import unittest

import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from launch import LaunchDescription
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from conftest import ensure_demo_model
from installed_launch import include_installed
from openvla_ros.actions import POSE_LABELS
from openvla_ros.demo.closed_loop import DEMO_INSTRUCTION_TOPIC
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY
from openvla_ros.diagnostic_values import decode
from openvla_ros.qos import LATCHED

MAX_STEPS = 8  # short: enough for the rise to show, cheap in every test run
INSTRUCTION = "move the gripper up"
# A guard against a hung loop, not a speed requirement (model and simulator load first).
EPISODE_TIMEOUT_S = 600.0


@pytest.mark.launch_test
def generate_test_description() -> LaunchDescription:
    model_dir = ensure_demo_model() / "onnx"
    return LaunchDescription([
        include_installed("sim_in_the_loop.launch.py", {
            "backend": "onnxruntime", "model_dir": str(model_dir), "unnorm_key": DEMO_UNNORM_KEY,
            "task_suite": "libero_object", "task_id": "0", "init_state_id": "0", "max_steps": str(MAX_STEPS),
            "instruction_topic": DEMO_INSTRUCTION_TOPIC}),
        launch_testing.actions.ReadyToTest(),
    ])


class TestClosedLoop(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("sim_in_the_loop_probe")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_policy_drives_an_episode_to_max_steps(self) -> None:
        status: dict[str, str] = {}
        positions: list[tuple[float, float, float]] = []
        actions: list[JointTrajectory] = []
        self.node.create_subscription(DiagnosticStatus, "episode_status",
                                      lambda m: status.update(decode(m), message=m.message), LATCHED)
        self.node.create_subscription(PoseStamped, "ee_pose", lambda m: positions.append(
            (m.pose.position.x, m.pose.position.y, m.pose.position.z)), 10)
        self.node.create_subscription(JointTrajectory, "action", actions.append, 10)
        self.node.create_publisher(String, DEMO_INSTRUCTION_TOPIC, LATCHED).publish(String(data=INSTRUCTION))

        deadline = time.monotonic() + EPISODE_TIMEOUT_S
        while time.monotonic() < deadline and status.get("done") != "true":
            rclpy.spin_once(self.node, timeout_sec=0.2)
        for _ in range(10):  # the final pose follows the done status
            rclpy.spin_once(self.node, timeout_sec=0.1)

        self.assertEqual(status.get("done"), "true", f"episode did not finish: {status}")
        self.assertEqual(status["step"], str(MAX_STEPS))
        self.assertIn(status["message"], ("success", "max_steps"))
        self.assertEqual(status["actions_rejected"], "0")
        self.assertGreaterEqual(len(actions), MAX_STEPS)
        self.assertEqual(list(actions[0].joint_names), list(POSE_LABELS))
        rise = positions[-1][2] - positions[0][2]
        self.assertGreater(rise, 0.02, f"{INSTRUCTION!r}: the end effector rose {rise:.4f} m in {MAX_STEPS} steps")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_both_nodes_exit_with_0(self, proc_info) -> None:
        names = sorted(proc_info.process_names())
        self.assertEqual([n.split("-")[0] for n in names], ["libero_bridge", "policy_node"], names)
        launch_testing.asserts.assertExitCodes(proc_info)
