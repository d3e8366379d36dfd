"""The policy node's lifecycle under the installed `policy.launch.py`: the file's event handlers
configure it on start and activate it once it is inactive; then `ros2 lifecycle set` takes it
through deactivate / cleanup / configure / activate, each step confirmed by the node's own
transition events, and the states that matter by `ros2 lifecycle get`: active after start-up,
inactive after `configure` (the launch file activates only once), active at the end. The node
exits with 0 when the launch shuts down.
"""
from __future__ import annotations

import threading
import unittest

import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from launch import LaunchDescription
from lifecycle_msgs.msg import TransitionEvent
from rclpy.executors import SingleThreadedExecutor

from conftest import ensure_demo_model
from installed_launch import include_installed
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY
from openvla_ros.node_process import wait_until
from ros2_cli import lifecycle_set, lifecycle_state

NODE = "/policy_node"
STARTUP_TIMEOUT_S = 300.0  # a guard for a loaded machine (imports, model load), not a speed requirement
DELIVERY_TIMEOUT_S = 60.0  # a guard for discovery and event delivery on a loaded machine, likewise
# ros2 lifecycle set TRANSITION -> the state it ends in, and whether `ros2 lifecycle get` confirms it.
CLI_TRANSITIONS = [("deactivate", "inactive", False), ("cleanup", "unconfigured", False),
                   ("configure", "inactive", True), ("activate", "active", True)]
STATE_IDS = {"unconfigured": 1, "inactive": 2, "active": 3}  # lifecycle_msgs/State


@pytest.mark.launch_test
def generate_test_description() -> LaunchDescription:
    model_dir = ensure_demo_model() / "onnx"
    return LaunchDescription([
        include_installed("policy.launch.py", {
            "backend": "onnxruntime", "model_dir": str(model_dir), "unnorm_key": DEMO_UNNORM_KEY}),
        launch_testing.actions.ReadyToTest(),
    ])


class TestLifecycle(unittest.TestCase):
    def test_event_handlers_then_ros2_lifecycle(self, proc_output) -> None:
        # The launch file's handlers: configure on start, activate on reaching inactive.
        proc_output.assertWaitFor("active, mode continuous", timeout=STARTUP_TIMEOUT_S)
        # The line is logged inside on_activate, a moment before the transition (activating [13]) ends.
        states: list[str] = []
        wait_until(lambda: states.append(lifecycle_state(NODE)) or states[-1] == "active [3]",
                   DELIVERY_TIMEOUT_S, interval=0.0)
        self.assertEqual(states[-1], "active [3]", states)

        rclpy.init()
        node = rclpy.create_node("lifecycle_probe")
        goals: list[str] = []
        events = node.create_subscription(TransitionEvent, f"{NODE}/transition_event",
                                          lambda event: goals.append(event.goal_state.label), 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        expected = [state for _, state, _ in CLI_TRANSITIONS]

        def primary() -> list[str]:
            return [label for label in list(goals) if label in ("unconfigured", "inactive", "active")]
        try:
            # The events are volatile: one published before the subscription is matched is never seen.
            self.assertTrue(wait_until(lambda: events.get_publisher_count() > 0, DELIVERY_TIMEOUT_S),
                            f"{NODE}/transition_event has no publisher")
            state = "active [3]"
            for transition, goal, confirm in CLI_TRANSITIONS:
                result = lifecycle_set(NODE, transition, state)
                state = f"{goal} [{STATE_IDS[goal]}]"
                self.assertIn("Transitioning successful", result.stdout,
                              f"{transition}: {result.stdout}{result.stderr}")
                if confirm:
                    # After `configure` the node stays inactive: the launch file's activate handler ran once.
                    self.assertEqual(lifecycle_state(NODE), state, transition)
            # The last event can still be waiting for the (starved) spinner when `set` returns.
            wait_until(lambda: len(primary()) >= len(expected), DELIVERY_TIMEOUT_S)
        finally:
            executor.shutdown()
            spinner.join()  # out of its wait set before the node's handles go
            node.destroy_node()
            rclpy.shutdown()
        self.assertEqual(primary(), expected)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_policy_node_exits_with_0(self, proc_info) -> None:
        self.assertEqual([name.split("-")[0] for name in proc_info.process_names()], ["policy_node"])
        launch_testing.asserts.assertExitCodes(proc_info)
