"""The README's daily-use `ros2` commands against the real node, as a user types them:
`ros2 launch` / `ros2 run` bring the policy node to active (`ros2 lifecycle get`), `ros2 param
get/set` read and change parameters (and show a refusal's reason), `ros2 topic echo` / `hz` show
the actions, and Ctrl-C (SIGINT to the process group, as a terminal sends it) ends it with 0.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ros2_tooling_problem

if ros2_tooling_problem():
    pytest.skip(ros2_tooling_problem(), allow_module_level=True)

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from openvla_ros.demo.instructions import DEMO_UNNORM_KEY  # noqa: E402
from ros2_cli import lifecycle_state, ros2, ros2_executable, ros2_on_node  # noqa: E402
from ros_probe import LATCHED, Probe  # noqa: E402

pytestmark = pytest.mark.slow
NODE = "/policy_node"
STARTUP_ATTEMPTS = 100  # `ros2 lifecycle get` polls (each a few seconds) before giving up: a guard, not a bound
EXIT_TIMEOUT_S = 60.0
READ_GUARD_S = 300.0


class Ros2Process:
    """A `ros2 ...` command in its own process group, stopped like a terminal's Ctrl-C."""

    def __init__(self, *args: str) -> None:
        # Unbuffered: lines reach read_until as the command prints them.
        self.proc = subprocess.Popen([ros2_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.output = ""

    def ctrl_c(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.output, _ = self.proc.communicate(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.output = self.proc.communicate()[0] + "\n(killed: did not exit after Ctrl-C)"
        return self.proc.returncode

    def read_until(self, text: str) -> str:
        """Output lines up to the first one holding `text` (or all of it, if the process ends first:
        after READ_GUARD_S it is stopped, a guard against waiting forever, not a speed requirement)."""
        guard = threading.Timer(READ_GUARD_S, lambda: os.killpg(self.proc.pid, signal.SIGINT))
        guard.start()
        lines = []
        try:
            for line in self.proc.stdout:
                lines.append(line)
                if text in line:
                    break
        finally:
            guard.cancel()
        return "".join(lines)

    def wait_until_active(self) -> None:
        for _ in range(STARTUP_ATTEMPTS):
            if self.proc.poll() is not None or lifecycle_state(NODE) == "active [3]":
                break
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.proc.communicate()[0]}"
        assert lifecycle_state(NODE) == "active [3]"


def policy_arguments(demo_model: Path) -> dict[str, str]:
    return {"backend": "onnxruntime", "model_dir": str(demo_model / "onnx"), "unnorm_key": DEMO_UNNORM_KEY}


@pytest.fixture(scope="module")
def launched(demo_model):
    """`ros2 launch openvla_ros policy.launch.py backend:=onnxruntime model_dir:=... unnorm_key:=...`."""
    process = Ros2Process("launch", "openvla_ros", "policy.launch.py",
                          *(f"{k}:={v}" for k, v in policy_arguments(demo_model).items()))
    try:
        process.wait_until_active()  # the launch file's event handlers, seen by `ros2 lifecycle get`
        yield process
    finally:
        process.ctrl_c()


def test_ros2_param_get_and_set(launched):
    assert ros2_on_node("param", "get", NODE, "backend").stdout.strip() == "String value is: onnxruntime"
    assert ros2_on_node("param", "set", NODE, "max_rate_hz", "5.0").stdout.strip() == "Set parameter successful"
    assert ros2_on_node("param", "get", NODE, "max_rate_hz").stdout.strip() == "Double value is: 5.0"
    refused = ros2_on_node("param", "set", NODE, "backend", "torch")
    assert (refused.stdout + refused.stderr).strip() == (
        "Setting parameter failed: backend cannot change once a model is loaded; "
        "deactivate and clean up, set backend, then configure")


def test_ros2_topic_echo_and_hz_show_actions(launched):
    frame = np.full((224, 224, 3), 128, dtype=np.uint8)
    stop = threading.Event()
    with Probe("camera") as probe:
        probe.publisher(String, "instruction", LATCHED).publish(String(data="move the gripper up"))
        images = probe.publisher(Image, "image")

        def publish_frames() -> None:
            while not stop.wait(0.1):
                msg = Image(height=224, width=224, encoding="rgb8", step=224 * 3, data=frame.tobytes())
                msg.header.stamp = probe.node.get_clock().now().to_msg()
                images.publish(msg)

        camera = threading.Thread(target=publish_frames, daemon=True)
        camera.start()
        try:
            echo = ros2("topic", "echo", "--once", "--no-daemon", "action/twist", "geometry_msgs/msg/TwistStamped")
            hz = Ros2Process("topic", "hz", "action")
            rate = hz.read_until("average rate:")
            hz.ctrl_c()
        finally:
            stop.set()
            camera.join()
    assert "twist:" in echo.stdout and "linear:" in echo.stdout and "frame_id: base_link" in echo.stdout, echo.stdout
    assert "average rate:" in rate, rate + hz.output


def test_ctrl_c_ends_ros2_launch_with_0(launched):
    assert launched.ctrl_c() == 0, launched.output
    assert "process has finished cleanly" in launched.output, launched.output


def test_ros2_run_with_autostart_and_ctrl_c(demo_model):
    """`ros2 run openvla_ros policy_node --ros-args -p autostart:=true -p backend:=... -p model_dir:=...`."""
    params = [arg for k, v in policy_arguments(demo_model).items() for arg in ("-p", f"{k}:={v}")]
    process = Ros2Process("run", "openvla_ros", "policy_node", "--ros-args", "-p", "autostart:=true", *params)
    try:
        process.wait_until_active()
    finally:
        code = process.ctrl_c()
    assert code == 0, process.output
