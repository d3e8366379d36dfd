"""The policy node in its own process over DDS on loopback, driven by a probe node from the test.

One node (tiny ONNX export, onnxruntime) serves most tests; each test leaves it active, enabled,
in continuous mode. Action values are compared with `openvla-ros predict --json` on the same image.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from openvla_ros.node_process import NodeProcess, wait_until  # noqa: E402
from openvla_ros.nodes.policy_diagnostics import policy_report  # noqa: E402
from openvla_ros.nodes.timing import timing_values  # noqa: E402
from openvla_ros.qos import SENSOR_DATA  # noqa: E402
from ros_probe import LATCHED, Probe  # noqa: E402

NODE = "/policy_node"
INSTRUCTION = "pick up the black bowl"
MAX_PIXELS = 96 * 128 * 2
LABELS = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def make_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def image_msg(data: np.ndarray | bytes, stamp, *, encoding: str = "rgb8", height: int | None = None,
              width: int | None = None, step: int | None = None) -> Image:
    """An Image message; explicit height/width/step/data make malformed ones."""
    if isinstance(data, np.ndarray):
        channels = data.shape[2] if data.ndim == 3 else 1
        height, width = height if height is not None else data.shape[0], width if width is not None else data.shape[1]
        step = step if step is not None else data.shape[1] * channels
        data = data.tobytes()
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=data)
    msg.header.stamp = stamp
    return msg


def predict_cli(backend: str, model_dir: Path, image: np.ndarray, instruction: str, tmp_path: Path) -> list[float]:
    path = tmp_path / "frame.png"
    PILImage.fromarray(image).save(path)
    option = {"torch": "--checkpoint", "onnxruntime": "--onnx"}[backend]
    out = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "predict", option, str(model_dir), "--image",
                          str(path), "--instruction", instruction, "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["action"]


class PolicyNodeHarness:
    """A running policy node plus a probe that talks to it."""

    def __init__(self, probe: Probe, node: NodeProcess, node_path: str = NODE) -> None:
        self.probe, self.node, self.node_path = probe, node, node_path
        self.images = probe.publisher(Image, "image", SENSOR_DATA)
        self.compressed = probe.publisher(CompressedImage, "image/compressed", SENSOR_DATA)
        self.instruction = probe.publisher(String, "instruction", LATCHED)
        probe.subscribe(JointTrajectory, "action")
        probe.subscribe(TwistStamped, "action/twist")
        probe.subscribe(Float64, "action/gripper")
        probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.subscribe(DiagnosticArray, f"{node_path}/timing")

    def now(self):
        return self.probe.node.get_clock().now().to_msg()

    def diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        """Key values of the next diagnostics message from the node."""
        self.probe.clear("/diagnostics")
        assert wait_until(lambda: self._own_status() is not None, timeout), "no diagnostics from the node"
        return self._own_status()

    def _own_status(self) -> dict[str, str] | None:
        for msg in reversed(self.probe.messages("/diagnostics")):
            report = policy_report(msg, self.node_path)
            if report is not None:
                return report.values | {"_level": report.level, "_message": report.message}
        return None

    def send_and_wait_action(self, msg: Image, timeout: float = 20.0) -> JointTrajectory | None:
        """Publish `msg` and return its action. While nothing comes back (best-effort QoS, or the
        node's image subscription, created on activate, not matched yet) it is re-sent, stamped
        anew so that it never goes stale; the action carries the stamp of the frame it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp = msg.header.stamp
            self.images.publish(msg)
            if wait_until(lambda: self.action_for(stamp) is not None, 2.0):
                return self.action_for(stamp)
            msg.header.stamp = self.now()
        return None

    def publish_until_counted(self, msg: Image, counter: str, timeout: float = 60.0) -> dict[str, str]:
        """Publish `msg` until the node's `counter` has grown, and return that status. Best-effort
        frames can be dropped, and on a loaded machine the next diagnostics message can predate the
        frame's callback: the count, not a pause, says the frame was handled."""
        before = int(self.diagnostics()[counter])
        status: dict[str, str] = {}

        def counted() -> bool:
            self.images.publish(msg)
            status.update(self.diagnostics())
            return int(status[counter]) > before

        assert self.node.wait_until(counted, timeout, interval=0.2), status
        return status

    def action_for(self, stamp) -> JointTrajectory | None:
        for msg in self.probe.messages("action"):
            if msg.header.stamp == stamp:
                return msg
        return None

    def change_state(self, transition: int) -> bool:
        return self.probe.call(ChangeState, f"{self.node_path}/change_state",
                               ChangeState.Request(transition=Transition(id=transition))).success

    def set(self, **values) -> list:
        return self.probe.set_parameters(self.node_path, **values)


def start_node(model_dir: Path, backend: str, tmp_path: Path, namespace: str | None = None,
               env: dict[str, str] | None = None, **params) -> NodeProcess:
    """The policy node; tests that run next to the module's node give it its own namespace."""
    return NodeProcess("policy_node", namespace=namespace, params={
        "backend": backend, "model_dir": str(model_dir), "autostart": True, "max_rate_hz": 50.0, **params},
        env=env, log_path=tmp_path / "policy_node.log").start()


def wait_active(harness: PolicyNodeHarness, timeout: float = 60.0) -> None:
    ok = harness.node.wait_until(lambda: (harness._own_status() or {}).get("state") == "active", timeout, interval=0.2)
    assert ok, "node did not become active:\n" + harness.node.log_text()[-3000:]


@contextmanager
def serving(probe: Probe, node: NodeProcess,
            make_harness: Callable[[Probe, NodeProcess], PolicyNodeHarness] = PolicyNodeHarness
            ) -> Iterator[PolicyNodeHarness]:
    """`node`'s harness once the node is active with INSTRUCTION set; the node stops on exit."""
    try:
        h = make_harness(probe, node)
        wait_active(h)
        h.instruction.publish(String(data=INSTRUCTION))
        yield h
    finally:
        node.stop()


@pytest.fixture(scope="module")
def harness(tiny_onnx_export, tmp_path_factory):
    logs = tmp_path_factory.mktemp("policy_node")
    with Probe() as probe, serving(probe, start_node(tiny_onnx_export, "onnxruntime", logs,
                                                     max_image_pixels=MAX_PIXELS)) as h:
        yield h


def test_actions_equal_predict_onnxruntime(harness, tiny_onnx_export, tmp_path):
    image = make_image(1)
    action = harness.send_and_wait_action(image_msg(image, harness.now()))
    assert action is not None, harness.node.log_text()[-3000:]
    stamp = action.header.stamp
    expected = predict_cli("onnxruntime", tiny_onnx_export, image, INSTRUCTION, tmp_path)
    assert action.joint_names == LABELS
    assert action.header.frame_id == "base_link"
    assert len(action.points) == 1 and list(action.points[0].positions) == expected
    assert wait_until(lambda: any(m.header.stamp == stamp for m in harness.probe.messages("action/twist")), 5.0)
    twist = next(m for m in harness.probe.messages("action/twist") if m.header.stamp == stamp)
    t = twist.twist
    assert [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z] == expected[:6]
    assert any(m.data == expected[6] for m in harness.probe.messages("action/gripper"))
    timing = next(m for m in harness.probe.messages(f"{NODE}/timing") if m.header.stamp == stamp)
    assert timing_values(timing)["backend_ms"] > 0


def test_torch_not_imported_with_onnxruntime(harness):
    assert harness.diagnostics()["torch_imported"] == "False"


def test_stale_frame_gives_no_action(harness):
    now = harness.probe.node.get_clock().now()
    stamp = (now - rclpy.duration.Duration(seconds=2.0)).to_msg()
    status = harness.publish_until_counted(image_msg(make_image(2), stamp), "frames_stale")
    assert "stale" in status["last_skip_reason"]
    assert harness.action_for(stamp) is None
    assert harness.send_and_wait_action(image_msg(make_image(3), harness.now())) is not None


BAD_IMAGES = {
    "unknown encoding": dict(encoding="yuv422"),
    "zero width": dict(width=0),
    "zero height": dict(height=0),
    "step below width x channels": dict(step=100),
    "data shorter than height x step": dict(height=200),
    "too many pixels": dict(height=96, width=128 * 3, step=128 * 3 * 3, data=bytes(96 * 128 * 3 * 3)),
}


@pytest.mark.parametrize("problem", list(BAD_IMAGES))
def test_bad_image_is_rejected_and_node_keeps_acting(harness, problem):
    fields = dict(BAD_IMAGES[problem])
    data = fields.pop("data", make_image(4))
    stamp = harness.now()
    harness.publish_until_counted(image_msg(data, stamp, **fields), "frames_rejected")
    assert harness.action_for(stamp) is None
    assert harness.node.running()
    assert harness.send_and_wait_action(image_msg(make_image(5), harness.now())) is not None


def test_bad_compressed_and_png_equals_raw(harness):
    harness.change_state(Transition.TRANSITION_DEACTIVATE)
    assert all(r.successful for r in harness.set(use_compressed=True))
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    try:
        before = int(harness.diagnostics()["frames_rejected"])
        bad = CompressedImage(format="jpeg", data=b"\xff\xd8 this is not a jpeg")
        bad.header.stamp = harness.now()
        for _ in range(3):
            harness.compressed.publish(bad)
            time.sleep(0.1)
        assert wait_until(lambda: int(harness.diagnostics()["frames_rejected"]) > before, 5.0)
        image, buffer = make_image(6), io.BytesIO()
        PILImage.fromarray(image).save(buffer, format="PNG")
        png = CompressedImage(format="png", data=buffer.getvalue())
        png.header.stamp = harness.now()
        deadline = time.monotonic() + 20
        while harness.action_for(png.header.stamp) is None and time.monotonic() < deadline:
            harness.compressed.publish(png)
            wait_until(lambda: harness.action_for(png.header.stamp) is not None, 2.0)
        from_png = harness.action_for(png.header.stamp)
        assert from_png is not None
    finally:
        harness.change_state(Transition.TRANSITION_DEACTIVATE)
        harness.set(use_compressed=False)
        assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    from_raw = harness.send_and_wait_action(image_msg(image, harness.now()))
    assert list(from_png.points[0].positions) == list(from_raw.points[0].positions)


def test_bad_instructions_are_rejected(harness):
    before = int(harness.diagnostics()["instructions_rejected"])
    for text in ("", "   ", "x" * 513):
        harness.instruction.publish(String(data=text))
        time.sleep(0.2)
    assert wait_until(lambda: int(harness.diagnostics()["instructions_rejected"]) >= before + 3, 5.0)
    stamp = harness.now()
    harness.images.publish(image_msg(make_image(7), stamp))
    assert wait_until(lambda: "no instruction" in harness.diagnostics()["last_skip_reason"], 5.0)
    assert harness.action_for(stamp) is None
    harness.instruction.publish(String(data=INSTRUCTION))
    time.sleep(0.3)
    assert harness.send_and_wait_action(image_msg(make_image(7), harness.now())) is not None


def test_enable_disable(harness):
    assert harness.probe.call(SetBool, f"{NODE}/enable", SetBool.Request(data=False)).success
    try:
        stamp = harness.now()
        for _ in range(5):
            harness.images.publish(image_msg(make_image(8), stamp))
            time.sleep(0.1)
        time.sleep(0.5)
        assert harness.action_for(stamp) is None
        assert harness.diagnostics()["enabled"] == "False"
    finally:
        assert harness.probe.call(SetBool, f"{NODE}/enable", SetBool.Request(data=True)).success
    assert harness.send_and_wait_action(image_msg(make_image(8), harness.now())) is not None


def test_trigger_mode_step(harness):
    assert harness.set(mode="trigger")[0].successful is False  # rejected while active
    assert harness.change_state(Transition.TRANSITION_DEACTIVATE)
    assert harness.set(mode="trigger")[0].successful
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    try:
        step = lambda: harness.probe.call(Trigger, f"{NODE}/step", Trigger.Request())  # noqa: E731
        response = step()
        assert not response.success and "no image" in response.message
        received = int(harness.diagnostics()["frames_received"])
        stamp = harness.now()
        for _ in range(3):
            harness.images.publish(image_msg(make_image(9), stamp))
            time.sleep(0.2)
        assert wait_until(lambda: int(harness.diagnostics()["frames_received"]) > received, 5.0)
        assert harness.action_for(stamp) is None  # trigger mode: nothing without a step
        assert harness.set(max_image_age_s=0.01)[0].successful
        response = step()
        assert not response.success and "stale" in response.message
        assert harness.set(max_image_age_s=30.0)[0].successful
        response = step()
        assert response.success, response.message
        assert harness.action_for(stamp) is not None  # published before the response
    finally:
        harness.change_state(Transition.TRANSITION_DEACTIVATE)
        harness.set(mode="continuous", max_image_age_s=0.5)
        assert harness.change_state(Transition.TRANSITION_ACTIVATE)


def test_lifecycle_and_parameters(harness):
    assert harness.set(max_rate_hz=20.0, max_image_age_s=1.0)[0].successful  # safe at run time
    refused = harness.set(backend="torch")[0]
    assert not refused.successful and "clean up" in refused.reason
    assert not harness.set(action_limits=[0.0, 1.0, 2.0])[0].successful  # odd count
    refused = harness.set(max_image_pixels=1000)[0]
    assert not refused.successful and "while the node is active" in refused.reason
    assert harness.change_state(Transition.TRANSITION_DEACTIVATE)
    assert harness.diagnostics()["state"] == "inactive"
    stamp = harness.now()
    for _ in range(3):
        harness.images.publish(image_msg(make_image(10), stamp))
        time.sleep(0.1)
    assert harness.action_for(stamp) is None
    assert harness.change_state(Transition.TRANSITION_CLEANUP)
    assert harness.diagnostics()["state"] == "unconfigured"
    assert harness.change_state(Transition.TRANSITION_CONFIGURE)
    assert harness.change_state(Transition.TRANSITION_ACTIVATE)
    assert harness.send_and_wait_action(image_msg(make_image(10), harness.now())) is not None


def test_action_limits_clip(harness, tiny_onnx_export, tmp_path):
    image = make_image(11)
    expected = np.array(predict_cli("onnxruntime", tiny_onnx_export, image, INSTRUCTION, tmp_path))
    limits = np.stack([expected - 0.5 * np.abs(expected) - 1e-3, expected + 1.0], axis=1)
    limits[0] = [expected[0] + 0.25, expected[0] + 1.0]  # forces a clip on x
    assert harness.set(action_limits=limits.ravel().tolist())[0].successful
    try:
        before = int(harness.diagnostics()["actions_clipped"])
        action = harness.send_and_wait_action(image_msg(image, harness.now()))
        got = list(action.points[0].positions)
        assert got[0] == expected[0] + 0.25 and got[1:] == expected[1:].tolist()
        assert int(harness.diagnostics()["actions_clipped"]) > before
    finally:
        assert harness.set(action_limits=[0.0])[0].successful


@pytest.mark.slow
def test_actions_equal_predict_torch(tiny_checkpoint, tmp_path):
    with Probe("torch_probe", namespace="torch") as probe:
        node = start_node(tiny_checkpoint, "torch", tmp_path, namespace="torch")
        try:
            h = PolicyNodeHarness(probe, node, "/torch/policy_node")
            wait_active(h, timeout=120.0)
            h.instruction.publish(String(data=INSTRUCTION))
            image = make_image(16)
            action = h.send_and_wait_action(image_msg(image, h.now()))
            assert action is not None, node.log_text()[-3000:]
        finally:
            node.stop()
    expected = predict_cli("torch", tiny_checkpoint, image, INSTRUCTION, tmp_path)
    assert list(action.points[0].positions) == expected


def test_non_finite_action_publishes_nothing_and_deactivates(tiny_onnx_export, tmp_path):
    # A real export whose norm stats are corrupt (infinite bounds for x) decodes x to NaN.
    broken = tmp_path / "broken_export"
    broken.mkdir()
    for path in tiny_onnx_export.iterdir():
        (broken / path.name).symlink_to(path)
    (broken / "manifest.json").unlink()
    manifest = json.loads((tiny_onnx_export / "manifest.json").read_text())
    for stats in manifest["norm_stats"].values():
        stats["action"]["q01"][0], stats["action"]["q99"][0] = float("-inf"), float("inf")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with Probe("nan_probe", namespace="broken") as probe:
        node = start_node(broken, "onnxruntime", tmp_path, namespace="broken", max_consecutive_errors=2)
        try:
            h = PolicyNodeHarness(probe, node, "/broken/policy_node")
            wait_active(h)
            h.instruction.publish(String(data=INSTRUCTION))
            stamps = []
            for seed in range(6):
                stamps.append(h.now())
                h.images.publish(image_msg(make_image(seed), stamps[-1]))
                time.sleep(0.3)
            assert wait_until(lambda: h.diagnostics()["state"] == "inactive", 10.0), node.log_text()[-3000:]
            status = h.diagnostics()
            assert node.running()
        finally:
            node.stop()
    assert not probe.messages("action") and not probe.messages("action/twist")
    assert int(status["errors"]) == 2 and "non-finite" in status["last_error"]
    assert status["_level"] == DiagnosticStatus.ERROR


def test_configure_failure_leaves_node_running_and_reports_why(tmp_path):
    with Probe("missing_probe", namespace="missing") as probe:
        node = start_node(tmp_path / "no_such_model", "onnxruntime", tmp_path, namespace="missing")
        try:
            h = PolicyNodeHarness(probe, node, "/missing/policy_node")
            assert wait_until(lambda: h._own_status() is not None, 20.0), node.log_text()[-3000:]
            status = h.diagnostics()
            assert node.running()
        finally:
            node.stop()
    assert status["state"] == "unconfigured" and status["_level"] == DiagnosticStatus.ERROR
    assert "model directory not found" in status["last_error"]


def _image_reader_reliability(probe: Probe, topic: str) -> ReliabilityPolicy | None:
    readers = probe.node.get_subscriptions_info_by_topic(topic)
    return readers[0].qos_profile.reliability if readers else None


def test_image_qos_is_sensor_data_unless_overridden(harness, tiny_onnx_export, tmp_path):
    """The standard qos_overrides parameter makes the image reader reliable (lockstep sim); the
    default reader stays best effort. Read from the DDS graph, as a publisher would match it."""
    probe = harness.probe
    assert _image_reader_reliability(probe, "/image") == ReliabilityPolicy.BEST_EFFORT
    node = start_node(tiny_onnx_export, "onnxruntime", tmp_path, namespace="lockstep",
                      **{"qos_overrides./lockstep/image.subscription.reliability": "reliable"})
    try:
        h = PolicyNodeHarness(probe, node, "/lockstep/policy_node")
        wait_active(h)
        assert wait_until(lambda: _image_reader_reliability(probe, "/lockstep/image") is not None, 10.0)
        assert _image_reader_reliability(probe, "/lockstep/image") == ReliabilityPolicy.RELIABLE
        # the override is read once, when the reader is created: it cannot change under a running node
        refused = h.set(**{"qos_overrides./lockstep/image.subscription.reliability": "best_effort"})[0]
        assert not refused.successful
    finally:
        node.stop()
