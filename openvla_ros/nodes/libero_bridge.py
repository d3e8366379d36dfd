"""LIBERO bridge: the LIBERO simulator as a ROS 2 robot for the policy node.

Run: `ros2 run openvla_ros libero_bridge --ros-args --params-file config/bridge.yaml` (or
`python -m openvla_ros.nodes.libero_bridge --ros-args ...`). All names are relative, so a
namespace or remaps place it next to the policy node.

Publishes (header.stamp of a frame = the ROS clock time the frame was published; the images,
joint_states, ee_pose and robot_state of one frame share it):
  image            sensor_msgs/Image rgb8, agentview camera, upright (rotated 180 degrees as
                   OpenVLA's LIBERO eval does), frame_id agentview_camera
  wrist/image      sensor_msgs/Image rgb8, wrist camera, upright, frame_id wrist_camera
                   (both camera_size square; with image_preprocess openvla, 224 x 224 after
                   OpenVLA's JPEG round trip and Lanczos resize, as its LIBERO eval feeds them)
  joint_states     sensor_msgs/JointState: robot0_joint1..7 + gripper0_finger_joint1/2 (rad, m)
  ee_pose          geometry_msgs/PoseStamped, frame_id robot0_base (+x forward, +y left, +z up)
  robot_state      sensor_msgs/JointState, OpenVLA-OFT's LIBERO proprio state as its evaluation
                   computes it: eef_pos_x/y/z (world frame, m), eef_axis_angle_x/y/z (rad),
                   gripper_qpos_left/right (m); frame_id world (openvla_ros/robot_state.py)
  instruction      std_msgs/String, the task's language; reliable + transient local (latched)
  episode_status   diagnostic_msgs/DiagnosticStatus, reliable + transient local, at every reset,
                   after every step and after every rejected action: name "libero_episode",
                   hardware_id "<suite>/<task_id>", level OK (ERROR when the sim failed),
                   message "running" | "success" | "max_steps" (or the error), values: episode,
                   task_suite, task_id, init_state_id, step, max_steps, success, done,
                   instruction, actions_rejected (per episode), action_latency_ms and
                   action_latency_ms_mean (lockstep: frame published -> its action received;
                   "" before the first step; action_latency_ms is "" on an action chunk's steps
                   after its first: one latency per action received)
Subscribes:
  action           trajectory_msgs/JointTrajectory from the policy node: header.stamp = stamp of
                   the frame it was computed from, joint_names x y z roll pitch yaw gripper (or
                   empty), one point with 7 finite positions (in lockstep also an action chunk:
                   several such points, executed in order), a stamp neither zero nor more than
                   max_future_stamp_s ahead of the bridge clock. Anything else is rejected
                   with a logged reason, counted in actions_rejected and never stepped.
                   Each point's gripper value goes through `gripper_postprocess` (openvla: [0,1]
                   -> +-1, binarized and inverted, as both OpenVLA's and OpenVLA-OFT's LIBERO evals
                   do; none: env units).
Services:
  ~/reset          std_srvs/Trigger: end the current episode and start a new one with the current
                   parameters (all parameters are read at reset; set task_suite / task_id /
                   init_state_id / ... first). Answers once the first frame is ready.
Client:
  policy_step      std_srvs/Trigger, lockstep with call_policy_step only. Remap `policy_step:=...`;
                   without a remap it calls policy_node/step (relative: same namespace).

Episodes: a reset loads the init state and runs `num_steps_wait` no-op steps (gripper open)
before the first frame is published. The episode ends on task success or after `max_steps`
actions (0 = the suite's OpenVLA default); the final state is published on joint_states /
ee_pose (no further images, so the policy stops) and episode_status says done.

mode=lockstep (deterministic, for evaluation), per step:
  1. publish the frame with stamp t;
  2. if call_policy_step: call policy_step (Trigger), the policy infers on its latest frame and
     publishes an action; otherwise the policy is expected to run `continuous` (one inference
     per new frame);
  3. wait for a valid action whose header.stamp == t; actions for other stamps are ignored (a
     stale one re-triggers policy_step at once: the policy had not seen frame t yet). After
     action_timeout_s without one, the same frame is sent again with a new stamp t' (a policy
     refuses old frames) and a new step request; an action for t or t' answers it (the same
     observation), so a round trip longer than action_timeout_s still gets through;
  4. apply it: one env step per trajectory point (a chunk of N points is N steps, each with its
     own status; the episode may end inside a chunk, and the rest of it is dropped), then the
     next frame is published: the policy's next step sees the state after the whole chunk.
mode=realtime: the sim steps at control_rate_hz with the latest action (one point; a chunk is
  rejected: executing it tick by tick is the policy node's action queue), held until a new one
  arrives; after action_timeout_s without a new action it steps with zero motion (gripper held).
  A frame is published after every step. A step slower than the period is logged as overrun.
"""
from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from openvla_ros.diagnostic_values import encode
from openvla_ros.nodes.shutdown import run_node
from openvla_ros.qos import FRAMES, LATCHED
from openvla_ros.qos import RELIABLE as ACTIONS
from openvla_ros.robot_state import LIBERO_STATE_NAMES, STATE_FRAME_ID, STATE_TOPIC
from openvla_ros.sim.action_inbox import ActionInbox, ReceivedAction, parse_action
from openvla_ros.sim.bridge_config import BridgeConfig
from openvla_ros.sim.episode import Episode
from openvla_ros.sim.heap import cap_malloc_arenas
from openvla_ros.sim.libero_env import NO_OP_ACTION, LiberoEnv, Observation, postprocess_gripper
from openvla_ros.sim.video import EpisodeVideo, episode_video_path
from openvla_ros.stamps import stamp_problem
from openvla_ros.tf_image import openvla_policy_image

BASE_FRAME = "robot0_base"
DEFAULT_POLICY_STEP = "policy_node/step"
STEP_RETRY_S = 0.1
RESET_TIMEOUT_S = 300.0  # creating an env for a new task takes ~10 s here; never hang a caller forever



def image_msg(image: np.ndarray, stamp, frame_id: str) -> Image:
    height, width, _ = image.shape
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = image.tobytes()
    return msg


def joint_state_msg(obs: Observation, stamp) -> JointState:
    msg = JointState(name=list(obs.joint_names), position=[float(v) for v in obs.joint_positions])
    msg.header.stamp = stamp
    msg.header.frame_id = BASE_FRAME
    return msg


def state_msg(obs: Observation, stamp) -> JointState:
    msg = JointState(name=list(LIBERO_STATE_NAMES), position=[float(v) for v in obs.state])
    msg.header.stamp = stamp
    msg.header.frame_id = STATE_FRAME_ID
    return msg


def pose_msg(obs: Observation, stamp) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = BASE_FRAME
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in obs.ee_position)
    q.x, q.y, q.z, q.w = (float(v) for v in obs.ee_quaternion)
    return msg


def status_msg(episode: Episode, error: str | None = None) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=DiagnosticStatus.ERROR if error else DiagnosticStatus.OK,
        name="libero_episode",
        message=error or episode.outcome,
        hardware_id=f"{episode.task_suite}/{episode.task_id}",
        values=encode(episode.values()),
    )



@dataclass
class _ResetRequest:
    finished: threading.Event
    ok: bool = False
    message: str = ""


class LiberoBridge(Node):
    def __init__(self, node_name: str = "libero_bridge") -> None:
        super().__init__(node_name)
        for name, default in BridgeConfig().to_dict().items():
            # YAML and the command line write 20 for 20.0: let float parameters take integers too.
            descriptor = ParameterDescriptor(dynamic_typing=isinstance(default, float))
            self.declare_parameter(name, default, descriptor)
        self._read_config().validate()  # a bad parameters file stops the node here, with the reason
        self.add_on_set_parameters_callback(self._check_parameters)

        self._image_pub = self.create_publisher(Image, "image", FRAMES)
        self._wrist_pub = self.create_publisher(Image, "wrist/image", FRAMES)
        self._joint_pub = self.create_publisher(JointState, "joint_states", FRAMES)
        self._pose_pub = self.create_publisher(PoseStamped, "ee_pose", FRAMES)
        self._state_pub = self.create_publisher(JointState, STATE_TOPIC, FRAMES)
        self._instruction_pub = self.create_publisher(String, "instruction", LATCHED)
        self._status_pub = self.create_publisher(DiagnosticStatus, "episode_status", LATCHED)
        self._policy_step = self.create_client(Trigger, self._policy_step_name(),
                                               callback_group=ReentrantCallbackGroup())
        self.create_subscription(JointTrajectory, "action", self._on_action, ACTIONS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=ReentrantCallbackGroup())

        self._inbox = ActionInbox()
        self._resets: queue.Queue[_ResetRequest] = queue.Queue()
        self._stopping = threading.Event()
        # Guards the episode record, shared by the sim thread and the action callback.
        self._lock = threading.Lock()
        self._env: LiberoEnv | None = None
        self._config = BridgeConfig()
        self._episode: Episode | None = None
        self._episode_count = 0
        self._obs: Observation | None = None
        self._error: str | None = None
        self._video: EpisodeVideo | None = None
        self._env_gripper = float(NO_OP_ACTION[-1])
        self._waiting_for_ns: int | None = None
        self._next_tick: float | None = None
        self._episode_started = 0.0
        self._frame_sent_at = 0.0

        if self._read_config().start_on_launch:
            self._resets.put(_ResetRequest(threading.Event()))
        self._sim_thread = threading.Thread(target=self._sim_loop, name="libero_sim", daemon=True)
        self._sim_thread.start()

    def _policy_step_name(self) -> str:
        # The client is called "policy_step" so it can be remapped under that name; without a remap
        # it goes to the step service of a policy node named policy_node next to this node.
        expanded = self.resolve_service_name("policy_step", only_expand=True)
        remapped = self.resolve_service_name("policy_step") != expanded
        return "policy_step" if remapped else DEFAULT_POLICY_STEP

    # ----- parameters -----
    def _read_config(self) -> BridgeConfig:
        return BridgeConfig.from_values({name: self.get_parameter(name).value for name in BridgeConfig.names()})

    def _check_parameters(self, params) -> SetParametersResult:
        proposed = self._read_config().to_dict()
        for param in params:
            if param.name in proposed:
                proposed[param.name] = param.value
        try:
            BridgeConfig.from_values(proposed).validate()
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # ----- ROS callbacks -----
    def _on_action(self, msg: JointTrajectory) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        try:
            problem = stamp_problem(stamp, self.get_clock().now().nanoseconds, self._config.max_future_stamp_s)
            if problem is not None:
                raise ValueError(problem[1])
            values = parse_action(msg.joint_names, [list(p.positions) for p in msg.points],
                                  chunks=self._config.mode == "lockstep")
        except ValueError as exc:
            self.get_logger().warning(f"rejected action (stamp {stamp} ns): {exc}")
            with self._lock:
                if self._episode is not None:
                    self._episode.actions_rejected += 1
                    self._status_pub.publish(status_msg(self._episode, self._error))
            return
        matched = self._inbox.put(values, stamp)
        awaited = self._waiting_for_ns
        if not matched and awaited is not None and stamp < awaited and self._config.call_policy_step:
            # The policy answered the step request from an older frame: frame t had not reached it yet.
            self._request_policy_step()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        reset = _ResetRequest(threading.Event())
        self._resets.put(reset)
        self._inbox.interrupt()
        if not reset.finished.wait(RESET_TIMEOUT_S):
            response.success, response.message = False, f"reset did not finish within {RESET_TIMEOUT_S} s"
        else:
            response.success, response.message = reset.ok, reset.message
        return response

    # ----- simulator thread -----
    def _sim_loop(self) -> None:
        try:
            self._serve_episodes()
        except Exception as exc:
            if self._stopping.is_set() or not self.context.ok():
                return  # ROS shut down under a publish; nothing left to report to
            self.get_logger().fatal(f"simulator thread stopped: {exc!r}")
            raise

    def _serve_episodes(self) -> None:
        while not self._stopping.is_set():
            try:
                reset = self._resets.get(timeout=0.0 if self._running() else 0.1)
            except queue.Empty:
                reset = None
            if reset is not None:
                reset.ok, reset.message = self._start_episode()
                reset.finished.set()
            elif self._running():
                self._advance()

    def _running(self) -> bool:
        return self._episode is not None and not self._episode.done and self._error is None

    def _start_episode(self) -> tuple[bool, str]:
        self._close_video()
        self._waiting_for_ns = None
        self._next_tick = None
        try:
            config = self._read_config().validate()
            env = self._env_for(config)
            obs = env.reset(config.init_state_id, config.num_steps_wait, config.reset_rng)
        except Exception as exc:  # a failed reset must be reported, and the node stay up for the next
            self.get_logger().error(f"reset failed: {exc}")
            with self._lock:
                self._error = f"reset failed: {exc}"
                if self._episode is not None:
                    self._status_pub.publish(status_msg(self._episode, self._error))
            return False, self._error
        self._episode_count += 1
        episode = Episode(self._episode_count, config.task_suite, config.task_id, config.init_state_id,
                          config.episode_steps, env.instruction)
        self._inbox.clear()
        with self._lock:
            self._config, self._episode, self._obs, self._error = config, episode, obs, None
            self._env_gripper = float(NO_OP_ACTION[-1])
            self._episode_started = time.monotonic()
            self._instruction_pub.publish(String(data=env.instruction))
            self._status_pub.publish(status_msg(episode))
        if config.record_video:
            path = episode_video_path(config.video_dir, config.task_suite, config.task_id,
                                      config.init_state_id, episode.episode)
            self._video = EpisodeVideo(path, fps=config.control_rate_hz)
            self._video.add(obs.agentview)
        message = (f"episode {episode.episode}: {config.task_suite}/{config.task_id} init state "
                   f"{config.init_state_id}, max_steps {episode.max_steps}, mode {config.mode}: {env.instruction}")
        self.get_logger().info(message)
        return True, message

    def _env_for(self, config: BridgeConfig) -> LiberoEnv:
        env = self._env
        if env is not None and (env.task_suite, env.task_id, env.camera_size, env.seed) == (
                config.task_suite, config.task_id, config.camera_size, config.seed):
            return env
        self.get_logger().info(f"loading {config.task_suite} task {config.task_id} ({config.camera_size} px)")
        new_env = LiberoEnv(config.task_suite, config.task_id, config.camera_size, config.seed)
        if env is not None:  # only now: a bad task id must not cost the working env
            env.close()
        self._env = new_env
        return new_env

    def _advance(self) -> None:
        """One control step: frame out, one action in, one env step per point of that action."""
        config = self._config
        if config.mode == "lockstep":
            action = self._await_matching_action()
            if action is None:
                return
            latency = action.received_at - self._frame_sent_at
            points = [postprocess_gripper(point, config.gripper_postprocess) for point in action.values]
            for index, env_action in enumerate(points):
                if index and (self._stopping.is_set() or not self._resets.empty()):
                    return  # a reset (or shutdown) waits for one env step, not for the rest of a chunk
                # the first point's step answers the frame; the others carry no latency of their own
                if not self._step_env(env_action, latency if index == 0 else None):
                    if index + 1 < len(points):
                        self.get_logger().info(f"episode over inside a chunk: its last {len(points) - index - 1} "
                                               f"of {len(points)} points were not executed")
                    return
        else:
            self._publish_frame(self._obs, self.get_clock().now().to_msg())
            self._sleep_until_next_tick(config)
            self._step_env(self._realtime_action(config), None)

    def _step_env(self, env_action: np.ndarray, latency: float | None) -> bool:
        """One env step with an env-unit action; False when the episode is over (or the sim failed)."""
        try:
            obs = self._env.step(env_action)
        except Exception as exc:  # the sim can diverge; say so instead of dying
            self.get_logger().error(f"env step failed: {exc}")
            with self._lock:
                self._error = f"sim failed: {exc}"
                self._status_pub.publish(status_msg(self._episode, self._error))
            return False
        self._env_gripper = float(env_action[-1])
        if self._video is not None:
            self._video.add(obs.agentview)
        with self._lock:
            self._obs = obs
            self._episode.record_step(obs.success, latency)
            done = self._episode.done
        if done:
            self._finish_episode(obs)
            return False
        with self._lock:
            self._status_pub.publish(status_msg(self._episode))
        return True

    def _finish_episode(self, obs: Observation) -> None:
        # Everything of the episode (video file, final state) is out before the status says done.
        self._close_video()
        final = self.get_clock().now().to_msg()
        self._joint_pub.publish(joint_state_msg(obs, final))
        self._pose_pub.publish(pose_msg(obs, final))
        self._state_pub.publish(state_msg(obs, final))
        with self._lock:
            self._status_pub.publish(status_msg(self._episode))
        episode, seconds = self._episode, time.monotonic() - self._episode_started
        self.get_logger().info(f"episode {episode.episode} done: {episode.outcome} after {episode.step} steps "
                               f"in {seconds:.1f} s ({1000.0 * seconds / episode.step:.0f} ms/step)")

    def _await_matching_action(self) -> ReceivedAction | None:
        """Lockstep: publish the current frame, ask the policy, wait for the action computed from it."""
        config = self._config
        action, waited = None, 0.0
        resent = False
        while not self._stopping.is_set() and self._resets.empty():
            # A re-sent frame gets a fresh stamp: a policy refuses frames older than its max image age.
            stamp = self.get_clock().now().to_msg()
            self._waiting_for_ns = Time.from_msg(stamp).nanoseconds
            if resent:
                self._inbox.also_expect(self._waiting_for_ns)
            else:
                self._inbox.expect(self._waiting_for_ns)
            resent = True
            self._publish_frame(self._obs, stamp)
            self._frame_sent_at = time.monotonic()
            self._request_policy_step()
            action = self._inbox.wait_matched(config.action_timeout_s)
            if action is not None or self._stopping.is_set() or not self._resets.empty():
                break
            waited += config.action_timeout_s
            self.get_logger().warning(
                f"no action for step {self._episode.step} after {waited:.1f} s; re-sending the frame"
                + (" and the step request" if config.call_policy_step else ""), throttle_duration_sec=10.0)
        self._waiting_for_ns = None
        return action

    def _request_policy_step(self) -> None:
        if self._config.mode != "lockstep" or not self._config.call_policy_step:
            return
        if not self._policy_step.service_is_ready():
            self.get_logger().warning(
                f"policy step service {self._policy_step.srv_name} not available yet; waiting",
                throttle_duration_sec=10.0)
            return
        awaited = self._waiting_for_ns
        future = self._policy_step.call_async(Trigger.Request())
        future.add_done_callback(lambda done: self._on_step_response(done, awaited))

    def _on_step_response(self, future, awaited: int | None) -> None:
        response = future.result()
        if response is None or response.success:
            return
        self.get_logger().warning(f"policy step request failed: {response.message!r}; asking again",
                                  throttle_duration_sec=5.0)
        # Typically the policy has not received frame t yet: ask again soon, not after action_timeout_s.
        if self._stopping.wait(STEP_RETRY_S) or not self.context.ok():
            return
        if awaited is not None and self._waiting_for_ns == awaited:
            self._request_policy_step()

    def _sleep_until_next_tick(self, config: BridgeConfig) -> None:
        period = 1.0 / config.control_rate_hz
        now = time.monotonic()
        next_tick = (self._next_tick or now) + period
        if next_tick < now:
            self.get_logger().warning(f"realtime overrun: a step took longer than the {period * 1000:.0f} ms period",
                                      throttle_duration_sec=10.0)
            next_tick = now
        self._stopping.wait(max(0.0, next_tick - now))
        self._next_tick = next_tick

    def _realtime_action(self, config: BridgeConfig) -> np.ndarray:
        latest = self._inbox.latest()
        if latest is None or time.monotonic() - latest.received_at > config.action_timeout_s:
            hold = NO_OP_ACTION.copy()
            hold[-1] = self._env_gripper
            return hold
        return postprocess_gripper(latest.values[0], config.gripper_postprocess)

    def _publish_frame(self, obs: Observation, stamp) -> None:
        self._joint_pub.publish(joint_state_msg(obs, stamp))
        self._pose_pub.publish(pose_msg(obs, stamp))
        self._state_pub.publish(state_msg(obs, stamp))
        self._wrist_pub.publish(image_msg(self._camera_image(obs.wrist), stamp, "wrist_camera"))
        self._image_pub.publish(image_msg(self._camera_image(obs.agentview), stamp, "agentview_camera"))

    def _camera_image(self, image: np.ndarray) -> np.ndarray:
        if self._config.image_preprocess == "openvla":
            return openvla_policy_image(image)
        return image

    def _close_video(self) -> None:
        if self._video is not None:
            path = self._video.close()
            self.get_logger().info(f"video: {path} ({self._video.frames} frames)")
            self._video = None

    def shutdown(self) -> None:
        """Stop the sim thread, finish the video and release the EGL context."""
        self._stopping.set()
        self._inbox.interrupt()
        self._sim_thread.join(timeout=30.0)
        # A ~/reset caller waiting for the sim thread would hold the executor's shutdown for
        # RESET_TIMEOUT_S: answer it now.
        while not self._resets.empty():
            reset = self._resets.get_nowait()
            reset.message = "the bridge is shutting down"
            reset.finished.set()
        self._close_video()
        if self._env is not None:
            self._env.close()
            self._env = None


def _release(node: LiberoBridge, executor: MultiThreadedExecutor, log) -> None:
    episode = node._episode
    if node._running():
        log(f"episode {episode.episode} running at step {episode.step}: the simulator finishes its step first")
    node.shutdown()
    # The process ends right after the cleanup (nodes/shutdown.py), so the pool's idle worker threads
    # need not be joined; a loaded machine took seconds to schedule them (rclpy >= Jazzy can skip it;
    # Humble's executor never joins them).
    if "wait_for_threads" in inspect.signature(executor.shutdown).parameters:
        executor.shutdown(wait_for_threads=False)
    else:
        executor.shutdown()


def main(args: list[str] | None = None) -> None:
    # Before any thread exists: with per-thread arenas every episode's model rebuild left
    # ~128 MB resident (openvla_ros.sim.heap).
    cap_malloc_arenas(1)
    run_node(args, "libero_bridge", LiberoBridge, lambda: MultiThreadedExecutor(num_threads=3), cleanup=_release)


if __name__ == "__main__":
    main()
