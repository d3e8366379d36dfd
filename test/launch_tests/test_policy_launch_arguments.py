"""Every argument the installed `policy.launch.py` declares reaches the node: a params file, the
name and namespace, both topic remaps, and the parameter overrides (which win over the params
file). A bad value stops `ros2 launch` before any node starts, naming the argument and what it
accepts.
"""
from __future__ import annotations

import os
import tempfile
import time
import unittest
from pathlib import Path

import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rcl_interfaces.srv import GetParameters
from rclpy.node import NodeNameNonExistentError
from rclpy.parameter import parameter_value_to_python

from conftest import ensure_demo_model
from installed_launch import include_installed, installed_launch_file
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY
from ros2_cli import ros2

STARTUP_TIMEOUT_S = 300.0  # guards for a loaded machine, not speed requirements
DISCOVERY_TIMEOUT_S = 60.0
# From the params file; backend is overridden by the argument of the same name.
PARAMS_FILE_VALUES = {"max_rate_hz": 7.5, "action_frame_id": "tool0", "backend": "torch"}


def launch_arguments(params_file: Path, model_dir: Path) -> dict[str, str]:
    return {"params_file": str(params_file), "namespace": "robot1", "node_name": "vla",
            "image_topic": "camera/color/image_raw", "instruction_topic": "task/instruction",
            "backend": "onnxruntime", "model_dir": str(model_dir), "unnorm_key": DEMO_UNNORM_KEY,
            "mode": "trigger", "center_crop_scale": "0.9"}


@pytest.mark.launch_test
def generate_test_description():
    model_dir = ensure_demo_model() / "onnx"
    fd, name = tempfile.mkstemp(prefix="policy_params_", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"/**": {"ros__parameters": PARAMS_FILE_VALUES}}, f)
    arguments = launch_arguments(Path(name), model_dir)
    description = LaunchDescription([
        include_installed("policy.launch.py", arguments),
        launch_testing.actions.ReadyToTest(),
    ])
    return description, {"arguments": arguments}


class TestArguments(unittest.TestCase):
    def test_every_declared_argument_is_exercised(self, arguments) -> None:
        source = PythonLaunchDescriptionSource(
            str(installed_launch_file("policy.launch.py"))).try_get_launch_description_without_context()
        declared = {e.name for e in source.entities if isinstance(e, DeclareLaunchArgument)}
        self.assertEqual(set(arguments), declared)

    def test_each_argument_reaches_the_node(self, proc_output, arguments) -> None:
        proc_output.assertWaitFor("active, mode trigger", timeout=STARTUP_TIMEOUT_S)
        rclpy.init()
        node = rclpy.create_node("launch_arguments_probe")
        try:
            client = node.create_client(GetParameters, "/robot1/vla/get_parameters")
            self.assertTrue(client.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S), "no /robot1/vla node")
            expected = {"backend": "onnxruntime", "model_dir": arguments["model_dir"], "unnorm_key": DEMO_UNNORM_KEY,
                        "mode": "trigger", "center_crop_scale": 0.9, "autostart": False,
                        "max_rate_hz": PARAMS_FILE_VALUES["max_rate_hz"],
                        "action_frame_id": PARAMS_FILE_VALUES["action_frame_id"]}
            future = client.call_async(GetParameters.Request(names=list(expected)))
            rclpy.spin_until_future_complete(node, future, timeout_sec=DISCOVERY_TIMEOUT_S)
            values = dict(zip(expected, (parameter_value_to_python(v) for v in future.result().values)))
            self.assertEqual(values, expected)

            wanted = {"/robot1/camera/color/image_raw", "/robot1/task/instruction"}
            deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
            topics: set[str] = set()
            while True:
                try:
                    topics = {name for name, _ in node.get_subscriber_names_and_types_by_node("vla", "/robot1")}
                except NodeNameNonExistentError:
                    # The service answered, but the node's own graph entry (ros_discovery_info) can
                    # arrive later than its service endpoints on a loaded machine: not there yet.
                    pass
                if wanted <= topics or time.monotonic() > deadline:
                    break
                rclpy.spin_once(node, timeout_sec=0.2)
            self.assertLessEqual(wanted, topics)
        finally:
            node.destroy_node()
            rclpy.shutdown()

    def test_a_bad_value_stops_the_launch_with_the_reason(self) -> None:
        for argument, reason in [("backend:=tensorflow", "backend 'tensorflow' is unknown; expected one of torch"),
                                 ("center_crop_scale:=1.5", "center_crop_scale:=1.5: expected a value in [0.01, 1.0]")]:
            result = ros2("launch", "openvla_ros", "policy.launch.py", argument, "node_name:=refused")
            output = result.stdout + result.stderr
            self.assertNotEqual(result.returncode, 0, output)
            self.assertIn(reason, output)
            self.assertNotIn("process started", output)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_policy_node_exits_with_0(self, proc_info, arguments) -> None:
        os.unlink(arguments["params_file"])
        launch_testing.asserts.assertExitCodes(proc_info)
