"""Closed loop through the launch files, on a ROS 2 install with launch_testing:
launch/sim.launch.py (LIBERO bridge, lockstep, a step request per frame) + launch/policy.launch.py
(policy node in trigger mode, ONNX Runtime, the demo model) run one short episode to its end. The
policy listens to `demo/instruction` (the demo model knows "move the gripper up", not LIBERO's task
language), and the end effector has to rise.

    launch_test test/test_sim_in_the_loop.launch.py        (or colcon test)

The model: OPENVLA_ROS_DEMO_MODEL (an exported ONNX model directory, default models/demo/onnx from
`openvla-ros make-demo --out models/demo`) and OPENVLA_ROS_DEMO_UNNORM_KEY (default libero_demo).
Without launch_testing, conftest.py reports this file as skipped; the same closed loop without launch
files is covered by test_bridge_node.py (and the demo model's by test_demo_sim.py).
"""
from __future__ import annotations

import os
import time
import unittest
from pathlib import Path

import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("OPENVLA_ROS_DEMO_MODEL", REPO_ROOT / "models" / "demo" / "onnx"))
UNNORM_KEY = os.environ.get("OPENVLA_ROS_DEMO_UNNORM_KEY", "libero_demo")
MAX_STEPS = 20
INSTRUCTION = "move the gripper up"
EPISODE_TIMEOUT_S = 300.0

if not (MODEL_DIR / "manifest.json").is_file():
    pytest.skip(f"no exported demo model at {MODEL_DIR}: run `openvla-ros make-demo --out models/demo` "
                "or set OPENVLA_ROS_DEMO_MODEL", allow_module_level=True)


@pytest.mark.launch_test
def generate_test_description() -> LaunchDescription:
    sim = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO_ROOT / "launch" / "sim.launch.py")),
        launch_arguments={"task_suite": "libero_object", "task_id": "0", "init_state_id": "0",
                          "mode": "lockstep", "call_policy_step": "true", "max_steps": str(MAX_STEPS)}.items())
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO_ROOT / "launch" / "policy.launch.py")),
        launch_arguments={"backend": "onnxruntime", "model_dir": str(MODEL_DIR), "unnorm_key": UNNORM_KEY,
                          "mode": "trigger", "instruction_topic": "demo/instruction"}.items())
    return LaunchDescription([sim, policy, launch_testing.actions.ReadyToTest()])


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
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(DiagnosticStatus, "episode_status",
                                      lambda m: status.update({kv.key: kv.value for kv in m.values},
                                                              message=m.message), latched)
        self.node.create_subscription(PoseStamped, "ee_pose", lambda m: positions.append(
            (m.pose.position.x, m.pose.position.y, m.pose.position.z)), 10)
        self.node.create_subscription(JointTrajectory, "action", actions.append, 10)
        self.node.create_publisher(String, "demo/instruction", latched).publish(String(data=INSTRUCTION))

        deadline = time.monotonic() + EPISODE_TIMEOUT_S
        while time.monotonic() < deadline and status.get("done") != "true":
            rclpy.spin_once(self.node, timeout_sec=0.2)
        for _ in range(10):  # the final pose follows the done status
            rclpy.spin_once(self.node, timeout_sec=0.1)

        self.assertEqual(status.get("done"), "true", f"episode did not finish in {EPISODE_TIMEOUT_S} s: {status}")
        self.assertEqual(status["step"], str(MAX_STEPS))
        self.assertIn(status["message"], ("success", "max_steps"))
        self.assertEqual(status["actions_rejected"], "0")
        self.assertGreaterEqual(len(actions), MAX_STEPS)
        self.assertEqual(list(actions[0].joint_names), ["x", "y", "z", "roll", "pitch", "yaw", "gripper"])
        rise = positions[-1][2] - positions[0][2]
        self.assertGreater(rise, 0.01, f"{INSTRUCTION!r}: the end effector rose {rise:.4f} m in {MAX_STEPS} steps")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_nodes_exit_cleanly(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
