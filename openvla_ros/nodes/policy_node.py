"""The OpenVLA policy node: camera images + an instruction in, unnormalized end-effector actions out.

A managed (lifecycle) node. Configure loads the backend through `openvla_ros.policy.load_policy`,
activate subscribes the camera and starts acting, deactivate stops publishing, cleanup releases
the backend. `autostart:=true` configures and activates on start.

This module is the ROS wiring; what the node does lives in the ROS-free `policy_core.PolicyCore`
(scheduling, state, input checks, inference and clipping, counters), message builders in
`policy_messages.py`. Threads: the core's inference thread picks the next inference and runs it;
a watchdog (backend_runner.py) answers one running past inference_timeout_s and lets a new
inference thread serve on, so a hung backend never stalls the node or its services. Callbacks
run on a single-threaded executor and never block: image/instruction callbacks only convert,
validate and store the latest frame; ~/step is a coroutine that awaits the worker's result, so a
step in progress never stalls image callbacks. (rclpy's MultiThreadedExecutor was measured at
~10 ms p50 from publish to callback for 224x224 frames here, against ~0.5 ms single-threaded.) A
frame arriving while another is pending replaces it (latest frame wins, counted as replaced). A
deactivation the core asks for (too many backend faults) runs on the executor, through a guard
condition.

Topics (relative, remappable):
  image               sensor_msgs/Image in (rgb8 bgr8 rgba8 bgra8 mono8; sensor-data QoS, depth 1;
                      history/depth/reliability overridable: qos_overrides./<ns>/image.subscription.*)
  image/compressed    sensor_msgs/CompressedImage in (jpeg/png), instead of `image` with use_compressed
  wrist/image         OpenVLA-OFT with >= 2 images: sensor_msgs/Image in, the wrist camera, handled like
                      `image` (QoS, overrides, wrist/image/compressed with use_compressed); a third image
                      is wrist2/image, and so on
  robot_state         OpenVLA-OFT with proprio: sensor_msgs/JointState in, one named position per state
                      value (LIBERO: robot_state.LIBERO_STATE_NAMES), sensor-data QoS, overridable.
                      Each inference pairs the latest frame with the latest wrist image(s) and state;
                      all stamps must lie within sync_tolerance_s (else: rejected as out of sync)
  instruction         std_msgs/String in (reliable, transient local: a latched instruction is received)
  action              trajectory_msgs/JointTrajectory out, one per inference: header.stamp = the
                      source image's stamp, header.frame_id = action_frame_id, joint_names = the
                      dimension labels (x y z roll pitch yaw gripper for 7-D actions, a0..aN
                      otherwise), one point whose positions are the unnormalized action (float64,
                      after action_limits) and time_from_start = 1/max_rate_hz. JointTrajectory is
                      the standard command type that carries a stamp, labels and values in one
                      message, so a consumer never pairs values with the wrong frame or labels.
                      OpenVLA-OFT: the whole chunk, one point per step, step k at time_from_start =
                      k / control_rate_hz (nodes/chunk_message.py); with action_output queue, one
                      message per control tick holding the chunk's point k alone (same stamp and
                      time_from_start as in the whole chunk)
  action/twist        geometry_msgs/TwistStamped out (7-D actions): linear = x y z deltas,
                      angular = roll pitch yaw deltas, frame action_frame_id, same stamp
  action/gripper      std_msgs/Float64 out (7-D actions): the gripper value
                      (OpenVLA-OFT: of a chunk's first step, or of the queue's action of this tick)
  ~/timing            diagnostic_msgs/DiagnosticArray out, one per inference published, header.stamp =
                      the image stamp: backend_ms (policy.predict), crop_ms, the backend's stage
                      timings, and wall-clock ns of frame received / inference start / action
                      published (for splitting end-to-end latency across processes)
  /diagnostics        diagnostic_msgs/DiagnosticArray at 1 Hz
Services: ~/enable (SetBool), ~/reset (Trigger: forget the pending frame and the error state),
  ~/step (Trigger, trigger mode: infer on the latest frame; answers after the action (OpenVLA-OFT:
  the whole chunk, whatever action_output is) is published, or success=false with the reason).
Input apart from faults (rejected, counted, never toward max_consecutive_errors) and backend
faults: see policy_core/core.py and the README's behaviour section.
"""
from __future__ import annotations

import time
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64, Header, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from openvla_ros.actions import POSE_LABELS
from openvla_ros.nodes import policy_params
from openvla_ros.nodes.chunk_message import chunk_trajectory
from openvla_ros.nodes.image_conversion import compressed_to_rgb, image_to_rgb
from openvla_ros.nodes.policy_messages import action_msg, diagnostics_msg, gripper_msg, stamp_msg, twist_msg
from openvla_ros.nodes.shutdown import SHUTDOWN_GRACE_S, run_node
from openvla_ros.nodes.timing import timing_message
from openvla_ros.policy import load_policy
from openvla_ros.policy_core.core import ACTIVE, INACTIVE, Outcome, PolicyCore, QueuedStep
from openvla_ros.policy_core.extra_inputs import wrist_topic
from openvla_ros.policy_protocol import Policy
from openvla_ros.qos import LATCHED, SENSOR_DATA
from openvla_ros.qos import RELIABLE as OUTPUTS
from openvla_ros.robot_state import STATE_TOPIC


class PolicyNode(LifecycleNode):
    def __init__(self, node_name: str = "policy_node", policy_loader: Callable[..., Policy] = load_policy) -> None:
        """`policy_loader(backend, model_dir, unnorm_key=..., verify_checksums=...)` loads the backend on
        configure. It is `load_policy` at run time; tests pass a loader that wraps the real backend to
        inject faults."""
        super().__init__(node_name)
        self._policy_loader = policy_loader
        # The core asks for a deactivation from its inference thread; the transition runs here.
        self._deactivation = self.create_guard_condition(self._on_deactivation_request)
        self._core = PolicyCore(policy_params.declare_all(self), lambda: self.get_clock().now().nanoseconds,
                                publish=lambda outcome: self._publish(self._publish_outcome, outcome),
                                request_deactivation=self._deactivation.trigger, log=self.get_logger(),
                                publish_step=lambda step: self._publish(self._publish_step, step))
        self._input_subs: list = []
        self._tick_timer = None  # the action queue's control-rate timer, while active with action_output queue
        # Lifecycle publishers: the action outputs go quiet whenever the node is not active.
        self._action_pub = self.create_lifecycle_publisher(JointTrajectory, "action", OUTPUTS)
        self._twist_pub = self.create_lifecycle_publisher(TwistStamped, "action/twist", OUTPUTS)
        self._gripper_pub = self.create_lifecycle_publisher(Float64, "action/gripper", OUTPUTS)
        self._timing_pub = self.create_lifecycle_publisher(DiagnosticArray, "~/timing", OUTPUTS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(String, "instruction", self._on_instruction, LATCHED)
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Trigger, "~/step", self._on_step)
        self.create_timer(1.0, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

    # ---- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        loaded = self._core.configure(self._policy_loader)
        return TransitionCallbackReturn.SUCCESS if loaded else TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        layout = self._core.chunk_layout
        # OpenVLA-OFT: its wrist camera(s) and the robot state too, subscribed before the frame: the
        # executor serves ready subscriptions in creation order, so inputs of one moment that are
        # waiting together are stored before their frame starts the inference that pairs them.
        if layout is not None:
            for index in range(layout.num_images - 1):
                self._subscribe_camera(wrist_topic(index), lambda msg, convert, index=index: self._core.offer_wrist(
                    index, Time.from_msg(msg.header.stamp).nanoseconds, lambda pixels: convert(msg, pixels)))
            if layout.uses_proprio:
                self._input_subs.append(self.create_subscription(
                    JointState, STATE_TOPIC, self._on_state, SENSOR_DATA,
                    qos_overriding_options=QoSOverridingOptions.with_default_policies()))
        self._subscribe_camera("image", self._offer_frame)
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._core.activate()
        if self._core.queues_actions:
            self._tick_timer = self.create_timer(1.0 / self._core.parameter("control_rate_hz"), self._core.tick)
        return result

    def _subscribe_camera(self, topic: str, offer: Callable[[Image | CompressedImage, Callable], None]) -> None:
        """`topic` (sensor_msgs/Image), or `topic`/compressed with use_compressed; `offer(msg, convert)`."""
        # Sensor-data QoS suits a camera; a lockstep simulator, whose frames must all arrive, sets
        # the standard override parameter qos_overrides./<ns>/<topic>.subscription.reliability.
        overridable = QoSOverridingOptions.with_default_policies()
        compressed = self._core.parameter("use_compressed")
        msg_type, convert = (CompressedImage, compressed_to_rgb) if compressed else (Image, image_to_rgb)
        self._input_subs.append(self.create_subscription(
            msg_type, f"{topic}/compressed" if compressed else topic, lambda msg: offer(msg, convert), SENSOR_DATA,
            qos_overriding_options=overridable))

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._core.deactivate()
        if self._tick_timer is not None:
            self.destroy_timer(self._tick_timer)
            self._tick_timer = None
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        self._input_subs.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._core.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._core.state == ACTIVE:
            self.on_deactivate(state)
        self._core.release()
        return TransitionCallbackReturn.SUCCESS

    def _on_deactivation_request(self) -> None:
        if self._core.deactivation_pending:  # not if a transition got there first
            self.trigger_deactivate()

    @property
    def state(self) -> str:
        """'unconfigured' | 'inactive' | 'active'."""
        return self._core.state

    def inference_running(self) -> bool:
        return self._core.inference_running()

    def close(self) -> None:
        """The process's end: stop the inference thread, release the backend."""
        # Within the shutdown guard's grace, with a second to spare for the rest of the cleanup: on
        # a loaded machine an inference can outlast it (main then ends the process, see _release).
        self._core.stop(timeout_s=SHUTDOWN_GRACE_S - 1.0)
        self._core.release()

    # ---- parameters: checked in the on-set callback, applied after they are set ------------
    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            reason = policy_params.change_refusal(param.name, self._core.state)
            try:
                policy_params.check_value(param.name, param.value)
                if param.name == "action_limits":
                    self._core.check_action_limits(param.value)
            except ValueError as exc:
                reason = reason or str(exc)
            if reason:
                self.get_logger().warning(f"rejected parameter {param.name}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        self._core.apply_parameters({param.name: param.value for param in params})

    # ---- inputs ----------------------------------------------------------------------------
    def _offer_frame(self, msg: Image | CompressedImage, convert: Callable) -> None:
        received_unix_ns = time.time_ns()
        self._core.offer_frame(Time.from_msg(msg.header.stamp).nanoseconds,
                               lambda max_pixels: convert(msg, max_pixels), received_unix_ns)

    def _on_state(self, msg: JointState) -> None:
        self._core.offer_state(Time.from_msg(msg.header.stamp).nanoseconds, list(msg.name), list(msg.position))

    def _on_instruction(self, msg: String) -> None:
        self._core.offer_instruction(msg.data)

    # ---- services --------------------------------------------------------------------------
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("enabled", Parameter.Type.BOOL, bool(request.data))])[0]
        response.success, response.message = result.successful, ("enabled" if request.data else "disabled")
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._core.reset()
        response.success, response.message = True, "pending frame and error state cleared"
        return response

    async def _on_step(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        executor = self.executor
        result: Future = Future(executor=executor)

        def done(failure: str | None) -> None:  # on the inference thread
            result.set_result(failure)
            executor.wake()  # the awaiting coroutine resumes on the executor's next turn

        failure = self._core.request_step(done) or await result
        response.success = failure is None
        response.message = failure or "action published"
        return response

    # ---- outputs ---------------------------------------------------------------------------
    def _publish(self, publish: Callable, what: Outcome | QueuedStep) -> None:
        """`publish(what)`: called by the core with its lock held (an outcome on its inference
        thread, a queued step on the executor's timer)."""
        try:
            publish(what)
        except RuntimeError:  # rclpy's RCLError: "publisher's context is invalid"
            # A SIGINT or SIGTERM shuts the context down from rclpy's signal handler, which can
            # happen between any two publishes: the node is stopping, the action is dropped.
            if self.context.ok():
                raise

    def _publish_outcome(self, outcome: Outcome) -> None:
        header = Header(stamp=stamp_msg(outcome.frame.stamp_ns), frame_id=self._core.parameter("action_frame_id"))
        action, labels = outcome.action, outcome.labels
        if not outcome.queued:  # a queued chunk goes out step by step, on the tick timer
            self._action_pub.publish(
                action_msg(header, labels, action.tolist(), 1.0 / self._core.parameter("max_rate_hz"))
                if action.ndim == 1 else self._chunk_msg(header, labels, action, first_step=1))
        published_unix_ns = time.time_ns()
        if not outcome.queued:
            self._publish_pose(header, labels, action.reshape(-1, len(labels))[0].tolist())
        inferred = outcome.inferred
        self._timing_pub.publish(timing_message(
            header, self.get_fully_qualified_name(), backend_ms=inferred.backend_ms,
            frame_received_unix_ns=outcome.frame.received_unix_ns, inference_start_unix_ns=outcome.started_unix_ns,
            action_published_unix_ns=published_unix_ns, crop_ms=inferred.crop_ms,
            **{f"stage_{k}_ms": v for k, v in inferred.stages_ms.items()}))

    def _publish_step(self, step: QueuedStep) -> None:
        """The queue's action of this tick: its chunk's point `step` alone, with the chunk's stamp."""
        header = Header(stamp=stamp_msg(step.stamp_ns), frame_id=self._core.parameter("action_frame_id"))
        self._action_pub.publish(self._chunk_msg(header, step.labels, step.action[None], first_step=step.step))
        self._publish_pose(header, step.labels, step.action.tolist())

    def _chunk_msg(self, header: Header, labels: tuple[str, ...], actions, first_step: int) -> JointTrajectory:
        return chunk_trajectory(actions, labels, header.stamp, header.frame_id,
                                self._core.parameter("control_rate_hz"), first_step)

    def _publish_pose(self, header: Header, labels: tuple[str, ...], action: list[float]) -> None:
        if labels == POSE_LABELS:
            self._twist_pub.publish(twist_msg(header, action))
            self._gripper_pub.publish(gripper_msg(action))

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(diagnostics_msg(self._core.status(), self.get_fully_qualified_name(),
                                               self._core.parameter("backend"), self.get_clock().now().to_msg()))


def _autostart(node: PolicyNode) -> None:
    if node.get_parameter("autostart").value:
        node.get_logger().info("autostart: configuring")
        node.trigger_configure()
        if node.state == INACTIVE and node.context.ok():  # not when a SIGTERM came during configure
            node.trigger_activate()


def _release(node: PolicyNode, executor: SingleThreadedExecutor, log: Callable[[str], None]) -> bool:
    """True when an inference still runs after close's wait (see run_node)."""
    if node.inference_running():
        log("an inference is running: it finishes before the backend is released")
    node.close()
    if node.inference_running():
        log("the inference is still running: the process ends without tearing the backend down under it")
        return True
    return False


def main(args: list[str] | None = None, policy_loader: Callable[..., Policy] = load_policy) -> None:
    """`policy_loader`: see PolicyNode; test/ros_scripts/fault_injecting_policy_node.py passes a
    fault-injecting wrapper of the real backend."""
    run_node(args, "policy_node", lambda: PolicyNode(policy_loader=policy_loader), SingleThreadedExecutor,
             start=_autostart, cleanup=_release)


if __name__ == "__main__":
    main()
