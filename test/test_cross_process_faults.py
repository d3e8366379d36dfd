"""Faults across the two node processes of the closed loop (real bridge, real policy node with the
tiny ONNX export, lockstep with step requests), each process killed with SIGKILL as a crash would:

- the bridge dies while the policy runs: the policy node keeps running (services, diagnostics),
  and once the last frame it got is older than `max_image_age_s` the stale-frame guard refuses to
  act on it, so no action leaves the node for a robot that is gone;
- the policy node dies during a lockstep episode: the bridge keeps the episode, re-sends its frame
  every `action_timeout_s`, and carries on when a new policy node comes up, to the episode's end.

The tiny export takes at most 31 prompt tokens, fewer than LIBERO's task language, so the policy
listens to a short instruction of the test's (latched, so a restarted node gets it too).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from openvla_ros.diagnostic_values import decode  # noqa: E402
from openvla_ros.node_process import NodeProcess, wait_until  # noqa: E402
from openvla_ros.nodes.policy_diagnostics import policy_report  # noqa: E402
from ros_probe import LATCHED, Probe  # noqa: E402

pytestmark = [pytest.mark.sim, pytest.mark.slow]

NAMESPACE = "/faults"
MAX_IMAGE_AGE_S = 2.0
ACTION_TIMEOUT_S = 3.0
STEPS = 12


def start_policy(model_dir: Path, log_path: Path) -> NodeProcess:
    return NodeProcess("policy_node", namespace=NAMESPACE, params={
        "backend": "onnxruntime", "model_dir": str(model_dir), "unnorm_key": "libero_demo", "mode": "trigger",
        "autostart": True, "max_image_age_s": MAX_IMAGE_AGE_S,
        "qos_overrides./faults/image.subscription.reliability": "reliable"},
        remaps={"instruction": "test_instruction"}, log_path=log_path).start()


def start_bridge(log_path: Path) -> NodeProcess:
    return NodeProcess("libero_bridge", namespace=NAMESPACE, params={
        "task_suite": "libero_spatial", "task_id": 0, "init_state_id": 0, "camera_size": 64, "mode": "lockstep",
        "num_steps_wait": 1, "max_steps": STEPS, "action_timeout_s": ACTION_TIMEOUT_S, "call_policy_step": True,
        "start_on_launch": True}, log_path=log_path).start()


class LoopProbe(Probe):
    def __init__(self) -> None:
        super().__init__("fault_probe", namespace=NAMESPACE)
        self.subscribe(DiagnosticStatus, "episode_status", LATCHED)
        self.subscribe(JointTrajectory, "action")
        self.subscribe(DiagnosticArray, "/diagnostics")
        self.publisher(String, "test_instruction", LATCHED).publish(String(data="move the gripper up"))

    def status(self) -> dict[str, str]:
        statuses = self.messages("episode_status")
        return decode(statuses[-1]) if statuses else {}

    def step(self) -> int:
        return int(self.status().get("step", "-1"))

    def policy_diagnostics(self) -> list[dict[str, str]]:
        reports = (policy_report(msg, f"{NAMESPACE}/policy_node") for msg in self.messages("/diagnostics"))
        return [report.values for report in reports if report is not None]


def test_bridge_killed_while_the_policy_runs(tiny_onnx_export, tmp_path):
    policy = start_policy(tiny_onnx_export, tmp_path / "policy.log")
    bridge = start_bridge(tmp_path / "bridge.log")
    try:
        with LoopProbe() as probe:
            assert bridge.wait_until(lambda: probe.step() >= 2, 300.0, interval=0.2), bridge.log_text()[-3000:]
            os.kill(bridge.pid, signal.SIGKILL)
            assert bridge.proc.wait(timeout=30.0) == -signal.SIGKILL
            actions_at_kill = len(probe.messages("action"))

            def refusal() -> str:
                return probe.call(Trigger, f"{NAMESPACE}/policy_node/step", Trigger.Request()).message

            # Until the last frame the policy received is older than max_image_age_s, a step may
            # still act on it; from then on every step is refused by the stale-frame guard.
            assert wait_until(lambda: "stale frame" in refusal(), 60.0, interval=0.5), refusal()
            refused_at = len(probe.messages("action"))
            for _ in range(3):
                response = probe.call(Trigger, f"{NAMESPACE}/policy_node/step", Trigger.Request())
                assert not response.success and "stale frame" in response.message, response.message
            assert len(probe.messages("action")) == refused_at  # nothing published once stale
            # Steps before that acted on the last frame the bridge sent, while it was still fresh.
            late = {(a.header.stamp.sec, a.header.stamp.nanosec) for a in probe.messages("action")[actions_at_kill:]}
            assert len(late) <= 1, late
            # The node itself is fine: alive, active, counting the stale frames it refused.
            probe.clear("/diagnostics")
            assert wait_until(lambda: len(probe.policy_diagnostics()) >= 2, 30.0)
            diagnostics = probe.policy_diagnostics()[-1]
            assert policy.running() and diagnostics["state"] == "active", diagnostics
            assert int(diagnostics["frames_stale"]) >= 4 and diagnostics["errors"] == "0", diagnostics
    finally:
        assert policy.stop() == 0, policy.log_text()[-3000:]
        bridge.stop()


def test_policy_killed_during_a_lockstep_episode(tiny_onnx_export, tmp_path):
    policy = start_policy(tiny_onnx_export, tmp_path / "policy.log")
    bridge = start_bridge(tmp_path / "bridge.log")
    replacement = None
    try:
        with LoopProbe() as probe:
            assert bridge.wait_until(lambda: probe.step() >= 3, 300.0, interval=0.2), bridge.log_text()[-3000:]
            os.kill(policy.pid, signal.SIGKILL)
            assert policy.proc.wait(timeout=30.0) == -signal.SIGKILL
            stalled_at = probe.step()
            assert stalled_at + 1 < STEPS  # steps are left for the replacement to drive
            # The bridge keeps the episode and re-sends its frame (and step request) while no policy answers.
            assert wait_until(lambda: "re-sending the frame" in bridge.log_text(), 60.0), bridge.log_text()[-3000:]
            assert probe.step() <= stalled_at + 1 and bridge.running()  # at most a step already answered
            replacement = start_policy(tiny_onnx_export, tmp_path / "policy2.log")
            assert bridge.wait_until(lambda: probe.status().get("done") == "true", 300.0, interval=0.2), \
                bridge.log_text()[-3000:]
            status = probe.status()
            assert status["step"] == str(STEPS) and status["actions_rejected"] == "0", status
    finally:
        for process in (replacement, policy, bridge):
            if process is not None:
                process.stop()
        assert bridge.proc.returncode == 0, bridge.log_text()[-3000:]
