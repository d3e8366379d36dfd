"""The demo in closed loop: the LIBERO bridge and the policy node (separate processes) run one
episode while this process switches the policy's instruction on a schedule, records what happens
(agentview frames, end-effector pose, actions, finger opening, all by frame stamp) and reports
the end-effector motion per instruction.

The policy's `instruction` input is remapped to `demo/instruction` (DEMO_INSTRUCTION_TOPIC), so
the bridge's task language does not compete with the schedule. A frame belongs to the
instruction that was current when it was published (stamps and switch times share the system
clock); a frame published just before a switch may still have been answered under the old
instruction, which `on_target` in the report makes visible.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from openvla_ros.evaluation.node_pair import NodePair
from openvla_ros.node_process import wait_until
from openvla_ros.sim.episode import EpisodeStatus

DEMO_INSTRUCTION_TOPIC = "demo/instruction"
RECORD_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
FINGER_JOINTS = ("gripper0_finger_joint1", "gripper0_finger_joint2")


@dataclass(frozen=True)
class Segment:
    instruction: str
    steps: int


# Up first and down last: the sideways motions happen above the objects on the table, and every
# motion is undone by the one after it.
DEMO_ORDER = ("move the gripper up", "move the gripper left", "move the gripper right", "move the gripper forward",
              "move the gripper backward", "move the gripper down", "close the gripper", "open the gripper")


def default_schedule(motion_steps: int = 12, gripper_steps: int = 10) -> tuple[Segment, ...]:
    """Every demo instruction once, in DEMO_ORDER."""
    return tuple(Segment(text, motion_steps if text.startswith("move") else gripper_steps) for text in DEMO_ORDER)



class Recorder:
    """Everything the bridge and the policy publish during one episode, keyed by stamp."""

    def __init__(self, pair: NodePair, keep_images: bool) -> None:
        self.lock = threading.Lock()
        self.images: dict[int, np.ndarray] = {}
        self.poses: dict[int, np.ndarray] = {}
        self.fingers: dict[int, float] = {}
        self.actions: dict[int, np.ndarray] = {}
        self.switches: list[tuple[int, str]] = []  # (system time ns, instruction)
        node = pair.node
        if keep_images:
            node.create_subscription(Image, "image", self._on_image, RECORD_QOS)
        node.create_subscription(PoseStamped, "ee_pose", self._on_pose, RECORD_QOS)
        node.create_subscription(JointState, "joint_states", self._on_joints, RECORD_QOS)
        node.create_subscription(JointTrajectory, "action", self._on_action, RECORD_QOS)

    def clear(self) -> None:
        with self.lock:
            for store in (self.images, self.poses, self.fingers, self.actions):
                store.clear()
            self.switches.clear()

    def _on_image(self, msg: Image) -> None:
        frame = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3).copy()
        with self.lock:
            self.images[Time.from_msg(msg.header.stamp).nanoseconds] = frame

    def _on_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        with self.lock:
            self.poses[Time.from_msg(msg.header.stamp).nanoseconds] = np.array([p.x, p.y, p.z])

    def _on_joints(self, msg: JointState) -> None:
        positions = dict(zip(msg.name, msg.position))
        if all(name in positions for name in FINGER_JOINTS):
            with self.lock:
                opening = positions[FINGER_JOINTS[0]] - positions[FINGER_JOINTS[1]]
                self.fingers[Time.from_msg(msg.header.stamp).nanoseconds] = opening

    def _on_action(self, msg: JointTrajectory) -> None:
        if len(msg.points) == 1:
            with self.lock:
                self.actions.setdefault(Time.from_msg(msg.header.stamp).nanoseconds, np.array(msg.points[0].positions))

    def state_stamps(self) -> list[int]:
        """Pose stamps in order, one per simulator state: when the bridge re-sends a frame (no
        action in time) the state and its pose repeat exactly, and only the last copy was acted on."""
        with self.lock:
            stamps = sorted(self.poses)
            return [s for s, later in zip(stamps, stamps[1:] + [None])
                    if later is None or not np.array_equal(self.poses[s], self.poses[later])]

    def instruction_at(self, stamp: int) -> str | None:
        current = None
        for switched_at, text in self.switches:
            if switched_at <= stamp:
                current = text
        return current


@dataclass
class SegmentReport:
    instruction: str
    steps: int  # frames published under this instruction
    ee_start: list[float]  # base frame, m
    ee_end: list[float]
    displacement_m: list[float]  # dx dy dz
    on_target: int  # actions equal to the instruction's decoded target
    mean_action: list[float]
    finger_opening_end_m: float | None


def summarize_segments(recorder: Recorder, expected: dict[str, np.ndarray]) -> list[SegmentReport]:
    """One report per scheduled instruction; a segment ends at the first state of the next one (or
    at the final state the bridge publishes when the episode is done). Steps are the states acted
    on (a frame with an action); re-sent copies of a frame count once."""
    pose_stamps = recorder.state_stamps()
    with recorder.lock:
        switches = list(recorder.switches)
        reports = []
        for index, (switched_at, text) in enumerate(switches):
            until = switches[index + 1][0] if index + 1 < len(switches) else None
            inside = [s for s in pose_stamps if s >= switched_at and (until is None or s < until)]
            after = [s for s in pose_stamps if until is not None and s >= until]
            if not inside:
                continue
            end = after[0] if after else pose_stamps[-1]
            actions = [recorder.actions[s] for s in inside if s in recorder.actions]
            fingers = [recorder.fingers[s] for s in sorted(recorder.fingers) if s <= end]
            start_xyz, end_xyz = recorder.poses[inside[0]], recorder.poses[end]
            reports.append(SegmentReport(
                instruction=text, steps=len(actions),
                ee_start=start_xyz.round(4).tolist(), ee_end=end_xyz.round(4).tolist(),
                displacement_m=(end_xyz - start_xyz).round(4).tolist(),
                on_target=sum(bool(np.allclose(a, expected[text], atol=1e-6)) for a in actions),
                mean_action=np.mean(actions, axis=0).round(4).tolist() if actions else [],
                finger_opening_end_m=round(float(fingers[-1]), 4) if fingers else None))
        return reports


def run_schedule(pair: NodePair, recorder: Recorder, schedule: Sequence[Segment], task_suite: str,
                 task_id: int, init_state_id: int) -> float:
    """One episode of sum(steps) steps, switching the instruction after each segment; returns its wall time."""
    if not schedule or any(seg.steps < 1 for seg in schedule):
        raise ValueError(f"schedule needs segments of >= 1 step, got {list(schedule)}")
    boundaries = np.cumsum([seg.steps for seg in schedule]).tolist()
    recorder.clear()

    def switch(text: str) -> None:
        with recorder.lock:
            recorder.switches.append((time.time_ns(), text))
        pair.publish_instruction(text)

    def on_status(status: EpisodeStatus) -> None:
        # `>=`, not `==`: a status seen late must still switch (and never twice for one boundary).
        step = status.step
        while len(recorder.switches) < len(schedule) and step >= boundaries[len(recorder.switches) - 1]:
            switch(schedule[len(recorder.switches)].instruction)

    switch(schedule[0].instruction)
    record = pair.run_episode(task_suite, task_id, init_state_id, max_steps=boundaries[-1], on_status=on_status)
    # One pose per frame plus the final one, published before the done status but on another topic.
    wait_until(lambda: len(recorder.poses) > boundaries[-1], timeout=5.0)
    return record.wall_s
