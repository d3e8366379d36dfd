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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import State
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import Trigger

from openvla_ros.diagnostic_values import decode
from openvla_ros.model_check import check_model_dir, check_model_family
from openvla_ros.node_process import NodeProcess, stop_processes
from openvla_ros.nodes.policy_diagnostics import PolicyReport, policy_report
from openvla_ros.nodes.policy_params import checked_overrides
from openvla_ros.qos import LATCHED, LATCHED_LOG
from openvla_ros.sim.bridge_config import BridgeConfig
from openvla_ros.sim.episode import EpisodeStatus

BRIDGE = "libero_bridge"
POLICY = "policy_node"
MAX_DOMAIN_ID = 232  # the largest domain id Fast DDS maps to valid ports
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class PairConfig:
    backend: str
    model_dir: Path
    domain_id: int
    log_dir: Path
    unnorm_key: str = ""
    # Parameters for the nodes beyond what the pair sets itself, name -> value; a node's own default
    # holds for every name not given. Checked against the policy node's declarations
    # (nodes/policy_params.py) and the bridge's (sim/bridge_config.py).
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)
    bridge_overrides: Mapping[str, Any] = field(default_factory=dict)
    record_video: bool = False
    video_dir: Path | None = None
    # Remap the policy's `instruction` input to this topic (the demo switches instructions there
    # instead of following the task's language from the bridge).
    instruction_topic: str | None = None
    startup_timeout_s: float = 180.0
    # "lockstep" (evaluation: the bridge calls the policy's ~/step per frame) or "realtime" (the
    # soak: the bridge steps at its control_rate_hz, the policy infers on every new frame).
    bridge_mode: str = "lockstep"
    # "oft": the policy also takes the bridge's wrist/image and robot_state, and answers a step with
    # an action chunk, which the bridge executes point by point (openvla_ros/nodes/libero_bridge.py)
    model_family: str = "openvla"

    def validate(self) -> PairConfig:
        if not 0 <= self.domain_id <= MAX_DOMAIN_ID:
            raise ValueError(f"ROS domain id {self.domain_id} out of range: expected 0..{MAX_DOMAIN_ID}")
        if self.record_video and self.video_dir is None:
            raise ValueError("record_video needs a video_dir")
        if self.bridge_mode not in ("lockstep", "realtime"):
            raise ValueError(f"bridge_mode must be lockstep or realtime, got {self.bridge_mode!r}")
        self.policy_parameters()
        self.bridge_parameters()
        check_model_dir(self.backend, self.model_dir, self.unnorm_key)
        check_model_family(self.backend, self.model_dir, self.model_family)
        return self

    def policy_parameters(self) -> dict[str, Any]:
        """The policy node's parameters: the checked overrides and the pair's own settings."""
        lockstep = self.bridge_mode == "lockstep"
        own = {
            "backend": self.backend, "model_dir": str(self.model_dir), "unnorm_key": self.unnorm_key,
            "mode": "trigger" if lockstep else "continuous", "autostart": True,
            # Lockstep waits for the action, so a frame is never stale in the control sense; a loaded
            # machine must not make the policy refuse it.
            "max_image_age_s": 30.0,
            # Every lockstep frame must arrive: a lost best-effort frame costs an action_timeout_s re-send.
            "qos_overrides./image.subscription.reliability": "reliable",
        }
        if self.model_family == "oft":  # the same for OFT's second camera and the robot state
            own["qos_overrides./wrist/image.subscription.reliability"] = "reliable"
            own["qos_overrides./robot_state.subscription.reliability"] = "reliable"
        _refuse_own("policy", self.policy_overrides, own)
        return {**checked_overrides(self.policy_overrides), **own}

    def bridge_parameters(self) -> dict[str, Any]:
        """The bridge's parameters: the checked overrides and the pair's own settings."""
        own = {"mode": self.bridge_mode, "call_policy_step": self.bridge_mode == "lockstep",
               "start_on_launch": False, "gripper_postprocess": "openvla", "record_video": self.record_video,
               **({"video_dir": str(self.video_dir)} if self.video_dir else {})}
        _refuse_own("bridge", self.bridge_overrides, own)
        parameters = {**self.bridge_overrides, **own}
        checked = BridgeConfig.from_values(parameters).validate()  # integers for floats become floats
        return {name: getattr(checked, name) for name in parameters}


def _refuse_own(node: str, overrides: Mapping[str, Any], own: Mapping[str, Any]) -> None:
    taken = sorted(set(overrides) & set(own))
    if taken:
        raise ValueError(f"{node} parameters {taken} are set by the node pair itself; override others only")


@dataclass
class EpisodeRecord:
    """What the bridge reported about one finished episode, seen from this process."""

    status: EpisodeStatus  # the final episode_status
    message: str  # "success" | "max_steps"
    latencies_ms: list[float]  # per step, frame published -> its action received (bridge's clock)
    wall_s: float
    video: Path | None = None

    @property
    def success(self) -> bool:
        return self.status.success

    @property
    def steps(self) -> int:
        return self.status.step


@dataclass(frozen=True)
class _Reported:
    """One episode_status message: its level and message, and its values decoded."""

    error: bool
    message: str
    status: EpisodeStatus


class _EpisodeLog:
    """Statuses of every episode by number, filled by the status callback."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.latest: dict[int, _Reported] = {}
        self.latencies: dict[int, dict[int, float]] = {}

    def add(self, msg: DiagnosticStatus) -> None:
        values = decode(msg)
        if "episode" not in values:
            return
        status = EpisodeStatus.from_values(values)
        with self.lock:
            self.latest[status.episode] = _Reported(msg.level == DiagnosticStatus.ERROR, msg.message, status)
            if status.action_latency_ms is not None:
                self.latencies.setdefault(status.episode, {})[status.step] = status.action_latency_ms
            self.lock.notify_all()

    def last_episode(self) -> int:
        with self.lock:
            return max(self.latest, default=0)


class NodePair:
    """Start with `start()` (or as a context manager); `run_episode` as often as needed; `close()`."""

    def __init__(self, config: PairConfig) -> None:
        self.config = config.validate()
        env = {"ROS_DOMAIN_ID": str(config.domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        log_dir = Path(config.log_dir)
        remaps = {"instruction": config.instruction_topic} if config.instruction_topic else None
        self.bridge = NodeProcess(BRIDGE, name=BRIDGE, params=config.bridge_parameters(), env=env,
                                  log_path=log_dir / f"{BRIDGE}_domain{config.domain_id}.log")
        self.policy = NodeProcess(POLICY, name=POLICY, params=config.policy_parameters(), remaps=remaps, env=env,
                                  log_path=log_dir / f"{POLICY}_domain{config.domain_id}.log")
        self.context: Context | None = None
        self.node = None
        self._executor: SingleThreadedExecutor | None = None
        self._spin_thread: threading.Thread | None = None
        self._log = _EpisodeLog()
        self._instruction_pub = None
        self._policy_report: PolicyReport | None = None  # the policy node's latest /diagnostics status

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
        self.node.create_subscription(DiagnosticStatus, "episode_status", self._log.add, LATCHED_LOG)
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
        report = policy_report(msg, f"/{POLICY}")
        if report is not None:
            self._policy_report = report

    def _wait_ready(self) -> None:
        """Until the bridge's services are up and the policy node is active (model loaded), so
        the first step's latency is not the model's load time. Ends at once, with the node's own
        reason, when a node exits or the policy node reports an error (a failed configure)."""
        deadline = time.monotonic() + self.config.startup_timeout_s

        def overdue(what: str) -> None:
            self._check_alive()
            report = self._policy_report
            if report is not None and report.error:
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
                    on_status: Callable[[EpisodeStatus], None] | None = None,
                    timeout_s: float | None = None) -> EpisodeRecord:
        """Reset the bridge into (task_suite, task_id, init_state_id) and wait until the episode ends.

        `on_status` sees every status of the episode, in this thread.
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
                reported = self._log.latest.get(episode) if episode > previous else None
            if reported is not None:
                if reported.status.step != seen_step:
                    seen_step = reported.status.step
                    if on_status:
                        on_status(reported.status)
                if reported.error:
                    raise RuntimeError(f"bridge error in episode {episode}: {reported.message}\n{self.log_tails()}")
                if reported.status.done:
                    return self._record(episode, reported, time.monotonic() - started)
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"episode in {task_suite}/{task_id} init {init_state_id} did not finish within "
                                   f"{timeout_s:.0f} s\n{self.log_tails()}")

    def _newer_status(self, previous: int, seen_step: int) -> bool:
        episode = max(self._log.latest, default=0)
        if episode <= previous:
            return False
        status = self._log.latest[episode].status
        return status.step != seen_step or status.done

    def _record(self, episode: int, reported: _Reported, wall_s: float) -> EpisodeRecord:
        status = reported.status
        with self._log.lock:
            by_step = dict(self._log.latencies.get(episode, {}))
        video = None
        if self.config.record_video:
            from openvla_ros.sim.video import episode_video_path

            video = episode_video_path(self.config.video_dir, status.task_suite, status.task_id, status.init_state_id,
                                       episode)
        return EpisodeRecord(status, reported.message, [by_step[s] for s in sorted(by_step)], wall_s, video)

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
