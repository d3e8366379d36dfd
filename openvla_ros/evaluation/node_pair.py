"""One LIBERO bridge + one policy node, each in its own process, alone in one ROS domain, driven
from this process through a node in an rclpy context bound to that domain.

The pair runs lockstep: the bridge publishes a frame, calls the policy's `~/step`, waits for the
action stamped with that frame, steps the simulator. This process only sets the episode's
parameters, calls `libero_bridge/reset` and follows `episode_status` until the episode is done.
Several pairs (several domains) run side by side without seeing each other's topics.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from openvla_ros.model_check import check_model_dir, check_model_family
from openvla_ros.node_process import NodeProcess, stop_processes

BRIDGE = "libero_bridge"
POLICY = "policy_node"
MAX_DOMAIN_ID = 232  # the largest domain id Fast DDS maps to valid ports
# Reliable + transient local like the bridge's status publisher; a deep reader queue so no
# per-step status (and its latency value) is dropped while this process is busy.
STATUS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class PairConfig:
    backend: str
    model_dir: Path
    domain_id: int
    log_dir: Path
    unnorm_key: str = ""
    camera_size: int = 256
    center_crop_scale: float = 1.0
    image_preprocess: str = "none"  # the bridge's: "openvla" publishes OpenVLA's 224 x 224 policy image
    num_steps_wait: int = 10
    reset_rng: str = "reseed"  # the bridge's: "openvla" places fixtures as OpenVLA's evaluation does
    record_video: bool = False
    video_dir: Path | None = None
    # Remap the policy's `instruction` input to this topic (the demo switches instructions there
    # instead of following the task's language from the bridge).
    instruction_topic: str | None = None
    startup_timeout_s: float = 180.0
    # "lockstep" (evaluation: the bridge calls the policy's ~/step per frame) or "realtime" (the
    # soak: the bridge steps at control_rate_hz, the policy infers on every new frame).
    bridge_mode: str = "lockstep"
    control_rate_hz: float = 20.0
    # "oft": the policy also takes the bridge's wrist/image and robot_state, and answers a step with
    # an action chunk, which the bridge executes point by point (openvla_ros/nodes/libero_bridge.py)
    model_family: str = "openvla"

    def validate(self) -> "PairConfig":
        if not 0 <= self.domain_id <= MAX_DOMAIN_ID:
            raise ValueError(f"ROS domain id {self.domain_id} out of range: expected 0..{MAX_DOMAIN_ID}")
        if self.record_video and self.video_dir is None:
            raise ValueError("record_video needs a video_dir")
        if self.bridge_mode not in ("lockstep", "realtime"):
            raise ValueError(f"bridge_mode must be lockstep or realtime, got {self.bridge_mode!r}")
        check_model_dir(self.backend, self.model_dir, self.unnorm_key)
        check_model_family(self.backend, self.model_dir, self.model_family)
        return self


@dataclass
class EpisodeRecord:
    """What the bridge reported about one finished episode, seen from this process."""

    values: dict[str, str]  # the final episode_status values
    message: str  # "success" | "max_steps"
    latencies_ms: list[float]  # per step, frame published -> its action received (bridge's clock)
    wall_s: float
    video: Path | None = None

    @property
    def success(self) -> bool:
        return self.values.get("success") == "true"

    @property
    def steps(self) -> int:
        return int(self.values["step"])


class _EpisodeLog:
    """Statuses of every episode by number, filled by the status callback."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.latest: dict[int, DiagnosticStatus] = {}
        self.latencies: dict[int, dict[int, float]] = {}

    def add(self, msg: DiagnosticStatus) -> None:
        values = {kv.key: kv.value for kv in msg.values}
        if "episode" not in values:
            return
        episode, step = int(values["episode"]), int(values.get("step", "0"))
        with self.lock:
            self.latest[episode] = msg
            if values.get("action_latency_ms"):
                self.latencies.setdefault(episode, {})[step] = float(values["action_latency_ms"])
            self.lock.notify_all()

    def last_episode(self) -> int:
        with self.lock:
            return max(self.latest, default=0)


def status_values(msg: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.values}


class NodePair:
    """Start with `start()` (or as a context manager); `run_episode` as often as needed; `close()`."""

    def __init__(self, config: PairConfig) -> None:
        self.config = config.validate()
        env = {"ROS_DOMAIN_ID": str(config.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        log_dir = Path(config.log_dir)
        lockstep = config.bridge_mode == "lockstep"
        bridge_params = {
            "mode": config.bridge_mode, "call_policy_step": lockstep, "start_on_launch": False,
            "control_rate_hz": config.control_rate_hz,
            "camera_size": config.camera_size, "gripper_postprocess": "openvla",
            "image_preprocess": config.image_preprocess, "num_steps_wait": config.num_steps_wait,
            "reset_rng": config.reset_rng,
            "record_video": config.record_video, "video_dir": str(config.video_dir or "libero_videos"),
        }
        policy_params = {
            "backend": config.backend, "model_dir": str(config.model_dir), "unnorm_key": config.unnorm_key,
            "mode": "trigger" if lockstep else "continuous", "autostart": True,
            "center_crop_scale": config.center_crop_scale,
            # Lockstep waits for the action, so a frame is never stale in the control sense; a loaded
            # machine must not make the policy refuse it.
            "max_image_age_s": 30.0,
            # Every lockstep frame must arrive: a lost best-effort frame costs an action_timeout_s re-send.
            "qos_overrides./image.subscription.reliability": "reliable",
        }
        if config.model_family == "oft":  # the same for OFT's second camera
            policy_params["qos_overrides./wrist/image.subscription.reliability"] = "reliable"
        remaps = {"instruction": config.instruction_topic} if config.instruction_topic else None
        self.bridge = NodeProcess(BRIDGE, name=BRIDGE, params=bridge_params, env=env,
                                  log_path=log_dir / f"{BRIDGE}_domain{config.domain_id}.log")
        self.policy = NodeProcess(POLICY, name=POLICY, params=policy_params, remaps=remaps, env=env,
                                  log_path=log_dir / f"{POLICY}_domain{config.domain_id}.log")
        self.context: Context | None = None
        self.node = None
        self._executor: SingleThreadedExecutor | None = None
        self._spin_thread: threading.Thread | None = None
        self._log = _EpisodeLog()
        self._instruction_pub = None
        self._policy_report: DiagnosticStatus | None = None  # the policy node's latest /diagnostics status

    # ----- lifecycle -----
    def start(self) -> "NodePair":
        """Start both nodes and wait until they are ready; on any failure (or Ctrl-C) they are stopped
        again before the exception leaves, since a context manager's exit does not run then."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.bridge.start()
        self.policy.start()
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.config.domain_id)
        self.node = rclpy.create_node(f"eval_driver_{self.config.domain_id}", context=self.context)
        self.node.create_subscription(DiagnosticStatus, "episode_status", self._log.add, STATUS_QOS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        if self.config.instruction_topic:
            self._instruction_pub = self.node.create_publisher(String, self.config.instruction_topic, LATCHED)
        self._reset = self.node.create_client(Trigger, f"{BRIDGE}/reset")
        self._set_parameters = self.node.create_client(SetParameters, f"{BRIDGE}/set_parameters")
        self._policy_step = self.node.create_client(Trigger, f"{POLICY}/step")
        self._policy_state = self.node.create_client(GetState, f"{POLICY}/get_state")
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._spin_thread = threading.Thread(target=self._executor.spin, name=f"driver-{self.config.domain_id}",
                                             daemon=True)
        self._spin_thread.start()
        self._wait_ready()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"/{POLICY}":
                self._policy_report = status

    def _wait_ready(self) -> None:
        """Until the bridge's services are up and the policy node is active (model loaded), so
        the first step's latency is not the model's load time. Ends at once, with the node's own
        reason, when a node exits or the policy node reports an error (a failed configure)."""
        deadline = time.monotonic() + self.config.startup_timeout_s

        def overdue(what: str) -> None:
            self._check_alive()
            report = self._policy_report
            if report is not None and report.level == DiagnosticStatus.ERROR:
                raise RuntimeError(f"{POLICY} (domain {self.config.domain_id}) reported: {report.message}\n"
                                   f"{self.log_tails()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} after {self.config.startup_timeout_s:.0f} s "
                                   f"(domain {self.config.domain_id})\n{self.log_tails()}")

        for client in (self._reset, self._set_parameters, self._policy_step, self._policy_state):
            while not client.wait_for_service(timeout_sec=0.5):
                overdue(f"{client.srv_name} not available")
        while self._call(self._policy_state, GetState.Request()).current_state.id != State.PRIMARY_STATE_ACTIVE:
            overdue(f"{POLICY} not active")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop the driver node and both processes; safe to call twice."""
        try:
            if self._executor is not None:
                self._executor.shutdown()
                self._spin_thread.join(timeout=10.0)
                self._executor = None
            if self.node is not None:
                self.node.destroy_node()
                self.node = None
            if self.context is not None:
                rclpy.try_shutdown(context=self.context)
                self.context = None
        finally:
            self.stop_nodes()

    def stop_nodes(self) -> None:
        """Stop both node processes (together, from any thread): a worker still driving this pair
        then fails at its next check, which is how another thread cancels it."""
        stop_processes([self.policy, self.bridge])

    def __enter__(self) -> "NodePair":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- episodes -----
    def publish_instruction(self, text: str) -> None:
        if self._instruction_pub is None:
            raise RuntimeError("this pair follows the bridge's task instruction (no instruction_topic)")
        self._instruction_pub.publish(String(data=text))

    def run_episode(self, task_suite: str, task_id: int, init_state_id: int, max_steps: int = 0,
                    on_status: Callable[[dict[str, str]], None] | None = None,
                    timeout_s: float | None = None) -> EpisodeRecord:
        """Reset the bridge into (task_suite, task_id, init_state_id) and wait until the episode ends.

        `on_status` sees every status of the episode (values dict), in this thread.
        `max_steps` 0 = the suite's OpenVLA default. RuntimeError if a node dies or it times out.
        """
        started = time.monotonic()
        self._call(self._set_parameters, self._parameters_request(
            task_suite=task_suite, task_id=task_id, init_state_id=init_state_id, max_steps=max_steps))
        previous = self._log.last_episode()
        response = self._call(self._reset, Trigger.Request())
        if not response.success:
            raise RuntimeError(f"bridge reset into {task_suite}/{task_id} init {init_state_id} failed: "
                               f"{response.message}\n{self.log_tails()}")
        # Episode length is bounded by the bridge; this only catches a stalled pair.
        timeout_s = timeout_s or self.config.startup_timeout_s + 30.0 * (max_steps or 600)
        deadline = time.monotonic() + timeout_s
        seen_step = -1
        while True:
            with self._log.lock:
                self._log.lock.wait_for(lambda: self._newer_status(previous, seen_step), timeout=1.0)
                episode = max(self._log.latest, default=0)
                msg = self._log.latest.get(episode) if episode > previous else None
            if msg is not None:
                values = status_values(msg)
                if int(values["step"]) != seen_step:
                    seen_step = int(values["step"])
                    if on_status:
                        on_status(values)
                if msg.level == DiagnosticStatus.ERROR:
                    raise RuntimeError(f"bridge error in episode {episode}: {msg.message}\n{self.log_tails()}")
                if values.get("done") == "true":
                    return self._record(episode, msg, time.monotonic() - started)
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"episode in {task_suite}/{task_id} init {init_state_id} did not finish within "
                                   f"{timeout_s:.0f} s\n{self.log_tails()}")

    def _newer_status(self, previous: int, seen_step: int) -> bool:
        episode = max(self._log.latest, default=0)
        if episode <= previous:
            return False
        values = status_values(self._log.latest[episode])
        return int(values["step"]) != seen_step or values.get("done") == "true"

    def _record(self, episode: int, msg: DiagnosticStatus, wall_s: float) -> EpisodeRecord:
        values = status_values(msg)
        with self._log.lock:
            by_step = dict(self._log.latencies.get(episode, {}))
        video = None
        if self.config.record_video:
            from openvla_ros.sim.video import episode_video_path

            video = episode_video_path(self.config.video_dir, values["task_suite"], int(values["task_id"]),
                                       int(values["init_state_id"]), episode)
        return EpisodeRecord(values, msg.message, [by_step[s] for s in sorted(by_step)], wall_s, video)

    # ----- plumbing -----
    def _parameters_request(self, **values) -> SetParameters.Request:
        return SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])

    def _call(self, client, request, timeout_s: float = 600.0):
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        while not done.wait(1.0):
            self._check_alive()
            timeout_s -= 1.0
            if timeout_s <= 0:
                raise RuntimeError(f"{client.srv_name} did not answer\n{self.log_tails()}")
        result = future.result()
        if isinstance(result, SetParameters.Response):
            refused = [r.reason for r in result.results if not r.successful]
            if refused:
                raise ValueError(f"bridge refused the episode parameters: {'; '.join(refused)}")
        return result

    def _check_alive(self) -> None:
        for process in (self.bridge, self.policy):
            if not process.running():
                raise RuntimeError(f"{process.name} (domain {self.config.domain_id}) exited with code "
                                   f"{process.proc.returncode if process.proc else None}\n{self.log_tails()}")

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name} log ({p.log_path}), last {LOG_TAIL_CHARS} chars ---\n"
                         f"{p.log_text()[-LOG_TAIL_CHARS:]}" for p in (self.bridge, self.policy))
