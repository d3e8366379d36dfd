"""`openvla-ros bench-node`: the policy node end to end over DDS (JSON).

Starts the policy node in its own process (continuous mode) and, from this process, publishes one
frame at a time (stamped now) and waits for the `action` carrying that stamp: end-to-end latency
is image publish -> action receive. The node reports the wall time of `Policy.predict` for each
frame on `~/timing` (same stamp); node overhead = end-to-end minus that backend time, i.e. DDS
transfer both ways, conversion, hand-off to the inference thread and publishing (split into
parts by the node's wall-clock marks in `overhead_parts`). Frames are sent
one after another, never while an inference runs, so no time is spent queueing.

Then, unless --no-floor, the same harness measures the transport floor
(openvla_ros.nodes.transport_floor_node): a node that converts each frame the same way and answers
at once from its callback. Its end-to-end time is what rclpy + DDS + conversion cost on this
machine with no inference thread and no model; the policy node's overhead is read against it.

All processes use the large-frames Fast DDS profile (openvla_ros.dds_profile) unless
FASTDDS_DEFAULT_PROFILES_FILE is already set.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from openvla_ros.commands.predict import MODEL_DIR_OPTIONS, _backend_and_dir
from openvla_ros.policy import BACKENDS
from openvla_ros.processing import DEFAULT_INSTRUCTION

DEFAULT_SIZES = ("224x224", "640x480")
ACTION_TIMEOUT_S = 60.0  # a timed frame whose action takes longer is counted as lost
FIRST_ACTION_TIMEOUT_S = 300.0
FLOOR_NAMESPACE = "bench_floor"  # keeps the floor node's all-zero actions off any robot's `action` topic
# glibc would hand each freed 900 KiB frame buffer of the small floor process back to the OS and
# page-fault the next one in (dds_in 2.8 vs 1.0 ms p50 at 640x480 here); the policy node's large
# heap keeps frame buffers resident anyway (the same setting measured no change there).
FLOOR_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The same model options as `openvla-ros predict`.
    for backend, option in MODEL_DIR_OPTIONS.items():
        parser.add_argument(f"--{option}", type=Path, help=f"model directory for the {backend} backend")
    parser.add_argument("--backend", choices=BACKENDS, help="default: the one whose model option is given")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="WxH",
                        help="input frame sizes (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=100, help="timed frames per size (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames per size first (default: %(default)s)")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    parser.add_argument("--unnorm-key", default="", help="norm stats key (default: the model's only key)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the transport floor (a node that answers each frame at once, no inference)")
    parser.add_argument("--out", type=Path, help="write the JSON report here instead of stdout")


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (width 640, height 480)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return width, height


def summarize(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms, dtype=np.float64)
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "mean": float(values.mean()), "max": float(values.max())}


class ActionWatcher:
    """Receive times of actions (perf_counter, wall ns) and the node's ~/timing values, keyed by image stamp (ns)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.action_at: dict[int, tuple[float, int]] = {}
        self.timing: dict[int, dict[str, float]] = {}

    @staticmethod
    def key(stamp) -> int:
        from rclpy.time import Time

        return Time.from_msg(stamp).nanoseconds

    def on_action(self, received_at: float, msg) -> None:
        with self._cond:
            self.action_at[self.key(msg.header.stamp)] = (received_at, time.time_ns())
            self._cond.notify_all()

    def on_timing(self, received_at: float, msg) -> None:
        from openvla_ros.nodes.timing import timing_values

        values = timing_values(msg)
        with self._cond:
            self.timing[self.key(msg.header.stamp)] = values
            self._cond.notify_all()

    def wait(self, key: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: key in self.action_at and key in self.timing, timeout)


def _frame(probe, data: bytes, width: int, height: int):
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=data)
    msg.header.stamp = probe.node.get_clock().now().to_msg()
    return msg


def _check_node(probe, node) -> None:
    """RuntimeError with the node's own reason if it exited or reports an error (a failed configure)."""
    from openvla_ros.nodes.policy_diagnostics import policy_report

    if not node.running():
        raise RuntimeError(f"{node.name} exited with code {node.proc.returncode}; log:\n{node.log_text()[-2000:]}")
    for msg in probe.messages("/diagnostics"):
        report = policy_report(msg, f"/{node.name}")
        if report is not None and report.error:
            raise RuntimeError(f"{node.name} reported: {report.message}")


def _wait_first_action(probe, publisher, watcher: ActionWatcher, node) -> None:
    """Send small frames until one is answered: discovery done, model loaded, instruction received."""
    deadline = time.monotonic() + FIRST_ACTION_TIMEOUT_S
    while time.monotonic() < deadline:
        _check_node(probe, node)
        msg = _frame(probe, bytes(64 * 64 * 3), 64, 64)
        publisher.publish(msg)
        if watcher.wait(ActionWatcher.key(msg.header.stamp), 1.0):
            return
    raise RuntimeError(f"no action from the policy node within {FIRST_ACTION_TIMEOUT_S:.0f} s")


def _measure_size(probe, publisher, watcher: ActionWatcher, size: tuple[int, int], frames: int,
                  warmup: int) -> dict:
    width, height = size
    images = [np.random.default_rng(i).integers(0, 256, size=(height, width, 3), dtype=np.uint8).tobytes()
              for i in range(4)]
    end_to_end, backend, lost = [], [], 0
    # Overhead split by the node's wall-clock marks (same machine, same clock).
    parts: dict[str, list[float]] = {"dds_in_ms": [], "callback_to_inference_ms": [], "inference_to_publish_ms": [],
                                     "dds_out_ms": []}
    for index in range(warmup + frames):
        msg = _frame(probe, images[index % len(images)], width, height)
        key = ActionWatcher.key(msg.header.stamp)
        sent_at, sent_ns = time.perf_counter(), time.time_ns()
        publisher.publish(msg)
        if not watcher.wait(key, ACTION_TIMEOUT_S):
            lost += index >= warmup
            continue
        if index >= warmup:
            (received_at, received_ns), timing = watcher.action_at[key], watcher.timing[key]
            end_to_end.append((received_at - sent_at) * 1e3)
            backend.append(timing["backend_ms"])
            parts["dds_in_ms"].append((timing["frame_received_unix_ns"] - sent_ns) * 1e-6)
            parts["callback_to_inference_ms"].append(
                (timing["inference_start_unix_ns"] - timing["frame_received_unix_ns"]) * 1e-6)
            parts["inference_to_publish_ms"].append(
                (timing["action_published_unix_ns"] - timing["inference_start_unix_ns"]) * 1e-6 - timing["backend_ms"])
            parts["dds_out_ms"].append((received_ns - timing["action_published_unix_ns"]) * 1e-6)
    if not end_to_end:
        raise RuntimeError(f"no action came back for any {width}x{height} frame; see the node log")
    overhead = [e - b for e, b in zip(end_to_end, backend)]
    return {"frames": len(end_to_end), "lost": lost, "end_to_end_ms": summarize(end_to_end),
            "backend_ms": summarize(backend), "node_overhead_ms": summarize(overhead),
            "overhead_parts": {name: summarize(values) for name, values in parts.items()}}


def _measure_node(node, namespace: str, timing_topic: str, sizes: list[tuple[int, int]], args: argparse.Namespace,
                  instruction: str | None) -> dict[str, dict]:
    """Start `node` (a NodeProcess), measure every size against it, stop it."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from openvla_ros.probe import Probe
    from openvla_ros.qos import LATCHED, SENSOR_DATA

    watcher = ActionWatcher()
    with Probe("bench_node_probe", namespace=namespace) as probe:
        probe.subscribe(JointTrajectory, "action", on_message=watcher.on_action)
        probe.subscribe(DiagnosticArray, timing_topic, on_message=watcher.on_timing)
        probe.subscribe(DiagnosticArray, "/diagnostics")
        images = probe.publisher(Image, "image", SENSOR_DATA)
        if instruction is not None:
            probe.publisher(String, "instruction", LATCHED).publish(String(data=instruction))
        node.start()
        try:
            deadline = time.monotonic() + FIRST_ACTION_TIMEOUT_S
            while not probe.wait_for_subscribers("image", timeout=0.5):  # it subscribes once active
                _check_node(probe, node)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not subscribe to image; log:\n{node.log_text()[-2000:]}")
            _wait_first_action(probe, images, watcher, node)
            return {f"{w}x{h}": _measure_size(probe, images, watcher, (w, h), args.frames, args.warmup)
                    for w, h in sizes}
        finally:
            node.stop()


def run(args: argparse.Namespace) -> int:
    from openvla_ros.model_check import check_model_dir
    from openvla_ros.node_process import NodeProcess
    from openvla_ros.dds_profile import large_frames_env

    backend, model_dir = _backend_and_dir(args)
    check_model_dir(backend, model_dir, args.unnorm_key)
    sizes = [parse_size(s) for s in args.sizes]
    if args.frames < 1 or args.warmup < 0:
        raise ValueError("--frames must be >= 1 and --warmup >= 0")
    workdir = Path(tempfile.mkdtemp(prefix="bench-node-"))
    # Must be in place before this process creates its first DDS participant.
    os.environ.update(large_frames_env(workdir))

    params = {"backend": backend, "model_dir": str(model_dir.resolve()), "unnorm_key": args.unnorm_key,
              "autostart": True, "mode": "continuous", "max_rate_hz": 1000.0}
    policy_node = NodeProcess("policy_node", name="bench_policy_node", params=params, log_path=workdir / "node.log")
    results = _measure_node(policy_node, "", "bench_policy_node/timing", sizes, args, args.instruction)
    if args.floor:
        floor_node = NodeProcess("transport_floor_node", name="transport_floor", namespace=FLOOR_NAMESPACE,
                                 env=FLOOR_MALLOC_ENV, log_path=workdir / "floor.log")
        floor = _measure_node(floor_node, FLOOR_NAMESPACE, "transport_floor/timing", sizes, args, None)
        for size, measured in floor.items():
            results[size]["transport_floor"] = {key: measured[key] for key in ("frames", "lost", "end_to_end_ms",
                                                                               "overhead_parts")}
    report = {"backend": backend, "model_dir": str(model_dir), "instruction": args.instruction,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "dds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), "sizes": results}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0
