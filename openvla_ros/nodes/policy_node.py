"""The OpenVLA policy node: camera images + an instruction in, unnormalized end-effector actions out.

A managed (lifecycle) node. Configure loads the backend through `openvla_ros.policy.load_policy`,
activate subscribes the camera and starts acting, deactivate stops publishing, cleanup releases
the backend. `autostart:=true` configures and activates on start.

Threads: a worker thread picks the next inference and waits for it, at most inference_timeout_s;
the backend runs it on its own thread (backend_runner.py), so a hung backend never stalls the
worker or the services. Callbacks run on a single-threaded
executor and never block: image/instruction callbacks only convert, validate and store the
latest frame; ~/step is a coroutine that awaits the worker's result, so a step in progress never
stalls image callbacks. (rclpy's MultiThreadedExecutor was measured at ~10 ms p50 from publish to
callback for 224x224 frames here, against ~0.5 ms single-threaded.) A frame arriving while
another is pending replaces it (latest frame wins, counted as replaced).

Topics (relative, remappable):
  image               sensor_msgs/Image in (rgb8 bgr8 rgba8 bgra8 mono8; sensor-data QoS, depth 1;
                      history/depth/reliability overridable: qos_overrides./<ns>/image.subscription.*)
  image/compressed    sensor_msgs/CompressedImage in (jpeg/png), instead of `image` with use_compressed
  instruction         std_msgs/String in (reliable, transient local: a latched instruction is received)
  action              trajectory_msgs/JointTrajectory out, one per inference: header.stamp = the
                      source image's stamp, header.frame_id = action_frame_id, joint_names = the
                      dimension labels (x y z roll pitch yaw gripper for 7-D actions, a0..aN
                      otherwise), one point whose positions are the unnormalized action (float64,
                      after action_limits) and time_from_start = 1/max_rate_hz. JointTrajectory is
                      the standard command type that carries a stamp, labels and values in one
                      message, so a consumer never pairs values with the wrong frame or labels.
  action/twist        geometry_msgs/TwistStamped out (7-D actions): linear = x y z deltas,
                      angular = roll pitch yaw deltas, frame action_frame_id, same stamp
  action/gripper      std_msgs/Float64 out (7-D actions): the gripper value
  ~/timing            diagnostic_msgs/DiagnosticArray out, one per published action, header.stamp =
                      the image stamp: backend_ms (policy.predict), crop_ms, the backend's stage
                      timings, and wall-clock ns of frame received / inference start / action
                      published (for splitting end-to-end latency across processes)
  /diagnostics        diagnostic_msgs/DiagnosticArray at 1 Hz
Services: ~/enable (SetBool), ~/reset (Trigger: forget the pending frame and the error state),
  ~/step (Trigger, trigger mode: infer on the latest frame; answers after the action is published,
  or success=false with the reason).
Input apart from faults (see the README's behaviour section): an instruction is checked on receipt
against the loaded model (text, length, control characters, the export's prompt token budget), and
a frame's stamp against the node clock (zero, or ahead by more than max_future_stamp_s); what fails
is rejected, counted and logged, and never counts toward max_consecutive_errors. A rejected
instruction unsets the current one: the node stops acting rather than carry on with an old task.
Only backend faults count: an exception from the backend, an inference running past
inference_timeout_s (backend_runner.py: the node keeps serving, the late result is discarded),
a non-finite action.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64, Header, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from openvla_ros.actions import POSE_LABELS, dimension_labels
from openvla_ros.input_checks import InputRejected, check_instruction_text
from openvla_ros.model_files import ModelFileError
from openvla_ros.nodes import policy_params
from openvla_ros.nodes.backend_runner import BackendBusy, BackendRunner, InferenceTimeout
from openvla_ros.nodes.image_conversion import compressed_to_rgb, image_to_rgb
from openvla_ros.nodes.latency_window import LatencyWindow
from openvla_ros.nodes.shutdown import run_node
from openvla_ros.nodes.timing import timing_message
from openvla_ros.policy import Policy, Prediction, load_policy
from openvla_ros.processing import center_crop
from openvla_ros.qos import LATCHED, SENSOR_DATA
from openvla_ros.qos import RELIABLE as OUTPUTS
from openvla_ros.stamps import stamp_problem

WARN_PERIOD_S = 5.0


@dataclass(frozen=True)
class Frame:
    seq: int
    image: np.ndarray  # uint8 HxWx3 RGB
    stamp: Time
    received_unix_ns: int  # wall clock at callback entry, comparable across processes (bench-node)


class StepRequest:
    """One ~/step call: the worker finishes it with None (action published) or the reason."""

    def __init__(self, executor) -> None:
        self._executor = executor
        self.result: Future = Future(executor=executor)

    def finish(self, failure: str | None) -> None:
        self.result.set_result(failure)
        self._executor.wake()  # the awaiting service coroutine resumes on the executor's next turn


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "policy_node", policy_loader: Callable[..., Policy] = load_policy) -> None:
        """`policy_loader(backend, model_dir, unnorm_key=...)` loads the backend on configure. It is
        `load_policy` at run time; tests pass a loader that wraps the real backend to inject faults."""
        super().__init__(node_name)
        self._policy_loader = policy_loader
        self._cfg = policy_params.declare_all(self)
        self._cond = threading.Condition()
        # Held while taking the policy and starting a backend call, so cleanup never closes the policy
        # in between; the backend runner defers a close until the running call returns.
        self._inference_lock = threading.Lock()
        self._state = "unconfigured"
        self._policy = None
        self._labels: list[str] = []
        self._limits: np.ndarray | None = None
        self._frame: Frame | None = None
        self._frame_seq = 0
        self._consumed_seq = 0
        self._next_start = 0.0
        self._instruction: str | None = None
        self._instruction_rejection = ""  # why the last instruction was rejected, until a good one arrives
        self._steps: deque[StepRequest] = deque()
        self._stopping = False
        self._worker_waiting = False  # the inference thread is blocked in _next_job_locked
        self._counts: Counter[str] = Counter()
        self._inference_ms = LatencyWindow()
        self._callback_ms = LatencyWindow()
        self._instruction_ms = LatencyWindow(size=100)
        self._consecutive_errors = 0
        self._last_error = ""
        self._last_skip = ""
        self._last_rejection = ""
        self._image_subs: list = []
        self._backend = BackendRunner()

        self._action_pub = self.create_publisher(JointTrajectory, "action", OUTPUTS)
        self._twist_pub = self.create_publisher(TwistStamped, "action/twist", OUTPUTS)
        self._gripper_pub = self.create_publisher(Float64, "action/gripper", OUTPUTS)
        self._timing_pub = self.create_publisher(DiagnosticArray, "~/timing", OUTPUTS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(String, "instruction", self._on_instruction, LATCHED)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/step", self._on_step)
        self.create_timer(1.0, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._work, name="policy_inference", daemon=True)
        self._worker.start()

    # ---- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        backend, model_dir = self._cfg["backend"], self._cfg["model_dir"]
        try:
            if not model_dir:
                raise ValueError("parameter model_dir is empty; set it to the model directory")
            policy = self._policy_loader(backend, model_dir, unnorm_key=self._cfg["unnorm_key"] or None,
                                         verify_checksums=self._cfg["verify_checksums"])
        except Exception as exc:  # any load failure leaves the node unconfigured with the reason
            # A damaged or missing model file is already one line naming the file and the remedy.
            reason = str(exc) if isinstance(exc, ModelFileError) else f"{type(exc).__name__}: {exc}"
            self._last_error = f"configure failed: {reason}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        try:
            limits = policy_params.parse_action_limits(self._cfg["action_limits"], policy.action_dim)
        except ValueError as exc:
            policy.close()
            self._last_error = f"configure failed: {exc}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        with self._cond:
            self._policy, self._limits = policy, limits
            self._labels = dimension_labels(policy.action_dim)
            self._state = "inactive"
            held = self._instruction
        if held is not None:  # received before this model was loaded: check it against the model now
            self._screen_instruction(held, policy)
        self.get_logger().info(f"loaded {policy.model_name} ({backend}, {policy.action_dim}-D actions, "
                               f"norm stats {policy.unnorm_key}) from {model_dir}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Sensor-data QoS suits a camera; a lockstep simulator, whose frames must all arrive, sets
        # the standard override parameter qos_overrides./<ns>/image.subscription.reliability.
        overridable = QoSOverridingOptions.with_default_policies()
        if self._cfg["use_compressed"]:
            self._image_subs.append(self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed, SENSOR_DATA,
                qos_overriding_options=overridable))
        else:
            self._image_subs.append(self.create_subscription(
                Image, "image", self._on_image, SENSOR_DATA, qos_overriding_options=overridable))
        with self._cond:
            self._frame = None
            self._consecutive_errors = 0
            self._state = "active"
            self._cond.notify_all()
        self.get_logger().info(f"active, mode {self._cfg['mode']}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._cond:
            self._state = "inactive"
            self._fail_steps_locked("node is inactive")
        for sub in self._image_subs:
            self.destroy_subscription(sub)
        self._image_subs.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_policy()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._state == "active":
            self.on_deactivate(state)
        self._release_policy()
        return TransitionCallbackReturn.SUCCESS

    @property
    def state(self) -> str:
        """'unconfigured' | 'inactive' | 'active'."""
        return self._state

    def inference_running(self) -> bool:
        """A backend call is running (the inference lock only covers starting one)."""
        return self._backend.busy()

    def _release_policy(self) -> None:
        with self._inference_lock:
            with self._cond:
                policy, self._policy = self._policy, None
                self._state = "unconfigured"
            if policy is not None:
                # A timed-out inference may still be running on it: closed once it returns.
                self._backend.close_when_idle(lambda: self._close_policy(policy))

    def _close_policy(self, policy: Policy) -> None:
        try:
            policy.close()
        except Exception as exc:  # nothing to recover; the node stays up and says what happened
            self.get_logger().error(f"releasing the backend failed: {type(exc).__name__}: {exc}")

    # ---- parameters ------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            reason = policy_params.change_refusal(param.name, self._state)
            try:
                policy_params.check_value(param.name, param.value)
                if param.name == "action_limits" and self._policy is not None:
                    policy_params.parse_action_limits(param.value, self._policy.action_dim)
            except ValueError as exc:
                reason = reason or str(exc)
            if reason:
                self.get_logger().warning(f"rejected parameter {param.name}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        with self._cond:
            for param in params:
                self._cfg[param.name] = param.value
                if param.name == "action_limits" and self._policy is not None:
                    self._limits = policy_params.parse_action_limits(param.value, self._policy.action_dim)
            self._cond.notify_all()
        return SetParametersResult(successful=True)

    # ---- inputs (callbacks only convert and store) ---------------------------------------
    def _on_image(self, msg: Image) -> None:
        self._store_frame(msg, image_to_rgb)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._store_frame(msg, compressed_to_rgb)

    def _store_frame(self, msg, convert) -> None:
        received_unix_ns, start = time.time_ns(), time.perf_counter()
        stamp = stamp_problem(Time.from_msg(msg.header.stamp).nanoseconds, self.get_clock().now().nanoseconds,
                              self._cfg["max_future_stamp_s"])
        if stamp is not None:
            kind, reason = stamp
            self._reject_frame(reason, f"frames_{kind}_stamp")
            return
        try:
            image = convert(msg, self._cfg["max_image_pixels"])
        except ValueError as exc:
            self._reject_frame(str(exc))
            return
        with self._cond:
            self._counts["frames_received"] += 1
            if self._frame is not None and self._frame.seq != self._consumed_seq:
                self._counts["frames_replaced"] += 1
            self._frame_seq += 1
            self._frame = Frame(self._frame_seq, image, msg.header.stamp, received_unix_ns)
            self._cond.notify_all()
            worker_woken = self._worker_waiting
        self._callback_ms.record((time.perf_counter() - start) * 1e3)
        if worker_woken:
            # Hand the GIL to the woken worker now: otherwise it waits for the executor's
            # bookkeeping after this callback, which delayed inference by ~0.6 ms on 2 cores.
            time.sleep(0)

    def _reject_frame(self, reason: str, counter: str | None = None) -> None:
        with self._cond:
            self._counts["frames_rejected"] += 1
            if counter:
                self._counts[counter] += 1
            self._last_rejection = f"image: {reason}"
        self.get_logger().warning(f"rejected image: {reason}", throttle_duration_sec=WARN_PERIOD_S)

    def _on_instruction(self, msg: String) -> None:
        start = time.perf_counter()
        with self._cond:
            policy = self._policy
        if self._screen_instruction(msg.data, policy):
            with self._cond:
                self._instruction, self._instruction_rejection = msg.data, ""
            self.get_logger().info(f"instruction: {msg.data!r}")
        self._instruction_ms.record((time.perf_counter() - start) * 1e3)

    def _screen_instruction(self, text: str, policy: Policy | None) -> bool:
        """Check `text` (against `policy`'s prompt budget when one is loaded); a failure is rejected."""
        try:
            # The length check comes first: it bounds the tokenizing cost of a huge message.
            check_instruction_text(text, self._cfg["max_instruction_chars"])
            if policy is not None:
                policy.check_instruction(text)
        except InputRejected as exc:
            self._reject_instruction(str(exc))
            return False
        except Exception as exc:  # a tokenizer failing on odd text is still that text's problem
            self._reject_instruction(f"could not be tokenized: {type(exc).__name__}: {exc}")
            return False
        return True

    def _reject_instruction(self, reason: str, if_current: str | None = None) -> None:
        """Count and log; unset the current instruction (only if it is still `if_current`, when given:
        a rejection found during an inference must not unset a newer instruction)."""
        with self._cond:
            self._counts["instructions_rejected"] += 1
            if if_current is None or self._instruction == if_current:
                self._instruction = None
            self._instruction_rejection = reason
            self._last_rejection = f"instruction: {reason}"
        self.get_logger().warning(f"rejected instruction (no instruction is set now): {reason}",
                                  throttle_duration_sec=WARN_PERIOD_S)

    # ---- services --------------------------------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("enabled", Parameter.Type.BOOL, bool(request.data))])[0]
        response.success, response.message = result.successful, ("enabled" if request.data else "disabled")
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._cond:
            self._frame = None
            self._consecutive_errors = 0
            self._last_error = self._last_skip = ""
        response.success, response.message = True, "pending frame and error state cleared"
        return response

    async def _on_step(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        step = StepRequest(self.executor)
        with self._cond:
            refusal = ("node is not active" if self._state != "active"
                       else "mode is continuous; ~/step needs mode trigger" if self._cfg["mode"] != "trigger" else None)
            if refusal is None:
                self._steps.append(step)
                self._cond.notify_all()
        failure = refusal or await step.result
        response.success = failure is None
        response.message = failure or "action published"
        return response

    def _fail_steps_locked(self, reason: str) -> None:
        while self._steps:
            self._steps.popleft().finish(reason)

    # ---- inference worker ------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next_job_locked()
                if job is None:
                    return
            frame, step = job
            failure = self._act_on(frame)
            if step is not None:
                step.finish(failure)

    def _next_job_locked(self) -> tuple[Frame | None, StepRequest | None] | None:
        """Wait for the next inference: a ~/step request, or (continuous) a new frame when the rate allows."""
        while not self._stopping:
            if self._steps:
                if self._frame is not None:
                    self._consumed_seq = self._frame.seq
                return self._frame, self._steps.popleft()
            fresh = self._frame is not None and self._frame.seq != self._consumed_seq
            if self._state == "active" and self._cfg["mode"] == "continuous" and fresh:
                wait = self._next_start - time.monotonic()
                if wait <= 0:
                    self._consumed_seq = self._frame.seq
                    self._next_start = time.monotonic() + 1.0 / self._cfg["max_rate_hz"]
                    return self._frame, None
                self._wait_locked(wait)
            else:
                self._wait_locked(None)
        return None

    def _wait_locked(self, timeout: float | None) -> None:
        self._worker_waiting = True
        try:
            self._cond.wait(timeout)
        finally:
            self._worker_waiting = False

    def _act_on(self, frame: Frame | None) -> str | None:
        """Infer on `frame` and publish; returns None, or why nothing was published."""
        # The lock covers taking the policy and starting the call, so cleanup cannot close the
        # policy in between; the wait is outside it, so a hung backend never blocks cleanup.
        with self._inference_lock:
            with self._cond:
                skip = self._skip_reason_locked(frame)
                instruction, policy, limits = self._instruction, self._policy, self._limits
                crop_scale, timeout = self._cfg["center_crop_scale"], self._cfg["inference_timeout_s"]
            if skip:
                return skip
            started_unix_ns, t0 = time.time_ns(), time.perf_counter()
            try:
                call = self._backend.start(lambda: _infer(policy, frame.image, crop_scale, instruction))
            except BackendBusy as exc:
                return self._record_error(str(exc))
        try:
            prediction, crop_ms, backend_ms = self._backend.wait(call, timeout)
        except InputRejected as exc:  # the input's fault, not the backend's: never counts toward deactivation
            return self._record_rejection(exc, instruction)
        except InferenceTimeout as exc:
            with self._cond:
                self._counts["inference_timeouts"] += 1
            return self._record_error(str(exc))
        except Exception as exc:  # a backend failure must never take the node down
            return self._record_error(f"{type(exc).__name__}: {exc}")
        t2 = time.perf_counter()
        action = np.asarray(prediction.action, dtype=np.float64)
        if action.shape != (len(self._labels),) or not np.all(np.isfinite(action)):
            return self._record_error(f"backend returned a non-finite or mis-shaped action {action.tolist()}")
        clipped = action if limits is None else np.clip(action, limits[:, 0], limits[:, 1])
        with self._cond:
            if self._state != "active" or not self._cfg["enabled"]:
                return "node was deactivated or disabled during the inference"
            self._publish(frame, clipped, prediction.timings_ms, crop_ms=crop_ms, backend_ms=backend_ms,
                          started_unix_ns=started_unix_ns)
            self._counts["actions_published"] += 1
            self._counts["actions_clipped"] += int(not np.array_equal(clipped, action))
            self._consecutive_errors = 0
            self._last_skip = ""
        self._inference_ms.record((t2 - t0) * 1e3)
        return None

    def _skip_reason_locked(self, frame: Frame | None) -> str | None:
        if self._state != "active":
            return "node is not active"
        if not self._cfg["enabled"]:
            return "disabled"
        if frame is None:
            reason = "no image received since activation or reset"
        elif self._instruction is None:
            reason = (f"no instruction set: the last one was rejected: {self._instruction_rejection}"
                      if self._instruction_rejection else "no instruction set (publish one on the instruction topic)")
        else:
            age_s = (self.get_clock().now().nanoseconds - Time.from_msg(frame.stamp).nanoseconds) * 1e-9
            if age_s <= self._cfg["max_image_age_s"]:
                return None
            self._counts["frames_stale"] += 1
            reason = f"stale frame: stamp is {age_s:.3f} s old; max_image_age_s is {self._cfg['max_image_age_s']}"
        self._counts["skipped"] += 1
        self._last_skip = reason
        self.get_logger().warning(f"no action: {reason}", throttle_duration_sec=WARN_PERIOD_S)
        return reason

    def _record_rejection(self, exc: InputRejected, instruction: str) -> str:
        if exc.kind == "instruction":
            self._reject_instruction(str(exc), if_current=instruction)
        else:
            self._reject_frame(str(exc))
        reason = f"rejected {exc.kind}: {exc}"
        with self._cond:
            self._last_skip = reason
        return reason

    def _record_error(self, message: str) -> str:
        with self._cond:
            self._counts["errors"] += 1
            self._consecutive_errors += 1
            self._last_error = message
            give_up = self._consecutive_errors >= self._cfg["max_consecutive_errors"] and self._state == "active"
        self.get_logger().error(f"inference failed, nothing published: {message}")
        if give_up:
            self.get_logger().error(f"{self._consecutive_errors} consecutive errors: deactivating")
            self.trigger_deactivate()
        return f"error: {message}"

    def _publish(self, frame: Frame, action: np.ndarray, stages: dict[str, float], *, crop_ms: float,
                 backend_ms: float, started_unix_ns: int) -> None:
        frame_id, period = self._cfg["action_frame_id"], 1.0 / self._cfg["max_rate_hz"]
        msg = JointTrajectory()
        msg.header.stamp, msg.header.frame_id = frame.stamp, frame_id
        msg.joint_names = list(self._labels)
        msg.points = [JointTrajectoryPoint(positions=action.tolist(),
                                           time_from_start=Duration(sec=int(period), nanosec=int(period % 1 * 1e9)))]
        self._action_pub.publish(msg)
        published_unix_ns = time.time_ns()
        if tuple(self._labels) == POSE_LABELS:
            twist = TwistStamped()
            twist.header = msg.header
            (twist.twist.linear.x, twist.twist.linear.y, twist.twist.linear.z,
             twist.twist.angular.x, twist.twist.angular.y, twist.twist.angular.z) = action[:6].tolist()
            self._twist_pub.publish(twist)
            self._gripper_pub.publish(Float64(data=float(action[6])))
        self._timing_pub.publish(timing_message(
            msg.header, self.get_fully_qualified_name(), backend_ms=backend_ms,
            frame_received_unix_ns=frame.received_unix_ns, inference_start_unix_ns=started_unix_ns,
            action_published_unix_ns=published_unix_ns, crop_ms=crop_ms,
            **{f"stage_{k}_ms": v for k, v in stages.items()}))

    # ---- diagnostics -----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        with self._cond:
            counts, state, error, skip = dict(self._counts), self._state, self._last_error, self._last_skip
            consecutive, enabled, policy = self._consecutive_errors, self._cfg["enabled"], self._policy
            instruction, rejection = self._instruction, self._last_rejection
        inference, callback = self._inference_ms.percentiles(50, 95), self._callback_ms.percentiles(50, 99)
        instruction_ms = self._instruction_ms.percentiles(100)
        if consecutive or (state == "unconfigured" and error):
            level, message = DiagnosticStatus.ERROR, error
        elif state != "active" or not enabled or skip:
            level, message = DiagnosticStatus.WARN, skip if state == "active" and enabled else (
                state if enabled else "disabled")
        else:
            level, message = DiagnosticStatus.OK, "acting"
        values = {
            "backend": self._cfg["backend"], "model": policy.model_name if policy else "",
            "model_dir": self._cfg["model_dir"], "unnorm_key": policy.unnorm_key if policy else "",
            "state": state, "mode": self._cfg["mode"], "enabled": str(enabled),
            "inference_latency_p50_ms": f"{inference[0]:.3f}" if inference else "",
            "inference_latency_p95_ms": f"{inference[1]:.3f}" if inference else "",
            "image_callback_p50_ms": f"{callback[0]:.4f}" if callback else "",
            "image_callback_p99_ms": f"{callback[1]:.4f}" if callback else "",
            "instruction_callback_max_ms": f"{instruction_ms[0]:.4f}" if instruction_ms else "",
            "instruction": instruction or "",
            **{key: str(counts.get(key, 0)) for key in (
                "frames_received", "frames_replaced", "frames_stale", "frames_rejected", "frames_zero_stamp",
                "frames_future_stamp", "instructions_rejected", "actions_published", "actions_clipped", "skipped",
                "errors", "inference_timeouts")},
            "late_results_discarded": str(self._backend.late_results_discarded),
            "consecutive_errors": str(consecutive), "last_error": error, "last_skip_reason": skip,
            "last_rejection": rejection,
            "torch_imported": str("torch" in sys.modules),
        }
        status = DiagnosticStatus(level=level, name=self.get_fully_qualified_name(), message=message,
                                  hardware_id=self._cfg["backend"],
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def stop_worker(self) -> None:
        with self._cond:
            self._stopping = True
            self._fail_steps_locked("node is shutting down")
            self._cond.notify_all()
        self._worker.join(timeout=5.0)
        self._backend.stop(timeout=5.0)


def _infer(policy: Policy, image: np.ndarray, crop_scale: float, instruction: str) -> tuple[Prediction, float, float]:
    """Runs on the backend thread: crop, predict; returns the prediction, crop ms and backend ms."""
    t0 = time.perf_counter()
    cropped = center_crop(image, crop_scale) if crop_scale != 1.0 else image
    t1 = time.perf_counter()
    prediction = policy.predict(cropped, instruction)
    return prediction, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3


def _autostart(node: PolicyNode) -> None:
    if node.get_parameter("autostart").value:
        node.get_logger().info("autostart: configuring")
        node.trigger_configure()
        if node.state == "inactive" and node.context.ok():  # not when a SIGTERM came during configure
            node.trigger_activate()


def _release(node: PolicyNode, executor, log) -> None:
    if node.inference_running():
        log("an inference is running: it finishes before the backend is released")
    node.stop_worker()
    node._release_policy()


def main(args: list[str] | None = None, policy_loader: Callable[..., Policy] = load_policy) -> None:
    """`policy_loader`: see PolicyNode; test/ros_scripts/fault_injecting_policy_node.py passes a
    fault-injecting wrapper of the real backend."""
    run_node(args, "policy_node", lambda: PolicyNode(policy_loader=policy_loader), SingleThreadedExecutor,
             start=_autostart, cleanup=_release)


if __name__ == "__main__":
    main()
