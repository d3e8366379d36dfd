"""LIBERO task suites behind a small, torch-free API with OpenVLA's LIBERO evaluation conventions.

- Camera frames come back upright: LIBERO renders them upside down, and OpenVLA's LIBERO
  evaluation rotates both by 180 degrees (`img[::-1, ::-1]`) before the policy sees them.
- A reset seeds the env, resets it, loads one of the task's fixed initial states and then runs
  `num_steps_wait` no-op steps with the gripper open (objects settle after being dropped in).
  The fixed initial state sets every joint, but not where a reset placed the fixtures (stove,
  cabinet, rack...): those come from numpy's global RNG at the reset. `reset_rng` "reseed" seeds
  before every reset; "openvla" gives the reset of init state k the RNG OpenVLA's evaluation has
  there: the env seeded once, then one reset per earlier init state (episode k uses init state k).
- Actions are in env units: 6-D end-effector delta (OSC_POSE) + gripper (-1 open, +1 close).
  `postprocess_gripper` turns a policy's [0, 1] gripper (1 = open) into that convention.
- The end-effector pose is reported in the robot base frame (+x forward, +y left, +z up).
- `state` is OpenVLA-OFT's LIBERO proprio state, from the raw observation exactly as OFT's
  evaluation computes it (world-frame eef position, axis-angle, finger qpos; openvla_ros/robot_state.py).

MuJoCo renders headless through EGL; MUJOCO_GL / PYOPENGL_PLATFORM are set before LIBERO (and
so MuJoCo) is first imported, unless the caller set them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from openvla_ros.robot_state import libero_state
from openvla_ros.sim.heap import release_free_heap

# Episode length per suite, as in OpenVLA's LIBERO evaluation (longest training demo + margin).
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# robosuite marks an episode terminated after this many env steps (wait steps included) and then
# refuses to step; it is passed explicitly so callers can check their budget against it.
ENV_HORIZON = 1000
ACTION_DIM = 7
GRIPPER_MODES = ("openvla", "none")
RESET_RNG_MODES = ("reseed", "openvla")
# EE delta zero, gripper open: what OpenVLA's evaluation steps while objects settle.
NO_OP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])

_ROBOT_BASE_BODY = "robot0_base"


@dataclass
class Observation:
    """One simulator frame. Images are uint8 HxWx3 RGB, upright (rotated as OpenVLA's eval does)."""

    agentview: np.ndarray
    wrist: np.ndarray
    joint_names: tuple[str, ...]
    joint_positions: np.ndarray
    ee_position: np.ndarray
    ee_quaternion: np.ndarray
    gripper_qpos: np.ndarray
    state: np.ndarray  # OFT's LIBERO proprio state [8], robot_state.LIBERO_STATE_NAMES
    success: bool


def check_action(action: Sequence[float]) -> np.ndarray:
    """Return `action` as a float64 (7,) array; ValueError if the shape is wrong or a value is not finite."""
    values = np.asarray(action, dtype=np.float64)
    if values.shape != (ACTION_DIM,):
        raise ValueError(f"action must have {ACTION_DIM} values (xyz, roll pitch yaw, gripper), "
                         f"got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"action must be finite, got {values.tolist()}")
    return values


def postprocess_gripper(action: Sequence[float], mode: str = "openvla") -> np.ndarray:
    """Map a policy action to LIBERO's gripper convention.

    "openvla": the policy's gripper is in [0, 1] with 1 = open; LIBERO wants -1 = open, +1 = close.
    As OpenVLA's LIBERO eval: rescale [0, 1] to [-1, 1], binarize by sign (0 stays 0), invert.
    "none": the action is already in env units and is returned unchanged (as a new array).
    """
    if mode not in GRIPPER_MODES:
        raise ValueError(f"gripper postprocess mode must be one of {GRIPPER_MODES}, got {mode!r}")
    values = check_action(action).copy()
    if mode == "openvla":
        values[-1] = -np.sign(2.0 * values[-1] - 1.0)
    return values


def _upright(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::-1, ::-1])


def _import_libero():
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    # robosuite warns on import that no private macro file exists; the defaults are what we want.
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    return benchmark, get_libero_path, OffScreenRenderEnv


def _xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.array([q[3], q[0], q[1], q[2]], dtype=np.float64)


class LiberoEnv:
    """One LIBERO task with offscreen rendering of the agentview and wrist cameras."""

    def __init__(self, task_suite: str, task_id: int, camera_size: int = 256, seed: int = 0) -> None:
        if task_suite not in MAX_STEPS:
            raise ValueError(f"unknown task suite {task_suite!r}; expected one of {sorted(MAX_STEPS)}")
        if camera_size <= 0:
            raise ValueError(f"camera_size must be a positive number of pixels, got {camera_size}")
        benchmark, get_libero_path, offscreen_env = _import_libero()
        suite = benchmark.get_benchmark_dict()[task_suite]()
        if not 0 <= task_id < suite.n_tasks:
            raise ValueError(f"task_id {task_id} out of range for {task_suite}: expected 0..{suite.n_tasks - 1}")
        task = suite.get_task(task_id)
        self.task_suite = task_suite
        self.task_id = task_id
        self.camera_size = camera_size
        self.seed = seed
        self.max_steps = MAX_STEPS[task_suite]
        self.instruction: str = task.language
        self._init_states = suite.get_task_init_states(task_id)
        self.num_init_states: int = len(self._init_states)
        bddl_file = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        self._env = offscreen_env(
            bddl_file_name=bddl_file, camera_heights=camera_size, camera_widths=camera_size, horizon=ENV_HORIZON
        )
        import mujoco  # after LIBERO, so the EGL settings above are in place

        self._mujoco = mujoco
        # "openvla" reset_rng: numpy's global RNG state before the reset of init state k, by k
        self._rng_before_reset: dict[int, tuple] = {}

    def reset(self, init_state_id: int, num_steps_wait: int = 10, reset_rng: str = "reseed") -> Observation:
        """Start an episode from the task's fixed initial state `init_state_id`."""
        self._require_open()
        if not 0 <= init_state_id < self.num_init_states:
            raise ValueError(f"init_state_id {init_state_id} out of range: expected 0..{self.num_init_states - 1}")
        if not 0 <= num_steps_wait < ENV_HORIZON:
            raise ValueError(f"num_steps_wait must be in 0..{ENV_HORIZON - 1}, got {num_steps_wait}")
        if reset_rng not in RESET_RNG_MODES:
            raise ValueError(f"reset_rng must be one of {RESET_RNG_MODES}, got {reset_rng!r}")
        if reset_rng == "openvla":
            self._restore_openvla_rng(init_state_id)
        else:
            self._env.seed(self.seed)
        # robosuite's hard reset (kept: it is what OpenVLA's evaluation runs) rebuilds the MuJoCo
        # model and render context; give the old one's pages back (see openvla_ros.sim.heap).
        self._env.reset()
        release_free_heap()
        raw = self._env.set_init_state(self._init_states[init_state_id])
        for _ in range(num_steps_wait):
            raw, _, _, _ = self._env.step(NO_OP_ACTION.copy())
        return self._observation(raw, bool(self._env.check_success()))

    def _restore_openvla_rng(self, init_state_id: int) -> None:
        """Put numpy's global RNG where OpenVLA's evaluation has it before episode `init_state_id`'s
        reset: seeded once, then one reset per earlier episode. States met on the way are kept, so
        episodes in order cost no extra reset; a jump ahead replays the resets in between (env steps
        draw nothing from that RNG)."""
        known = self._rng_before_reset
        if not known:
            self._env.seed(self.seed)
            known[0] = np.random.get_state()
        start = max(k for k in known if k <= init_state_id)
        np.random.set_state(known[start])
        for k in range(start, init_state_id):
            self._env.reset()
            known[k + 1] = np.random.get_state()

    def step(self, action: Sequence[float]) -> Observation:
        """Apply one env-unit action (after any gripper postprocessing) for one control step (20 Hz)."""
        self._require_open()
        raw, _, success, _ = self._env.step(check_action(action))
        return self._observation(raw, bool(success))

    def close(self) -> None:
        """Release the simulator and its EGL context; safe to call twice."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> "LiberoEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._env is None:
            raise RuntimeError("LiberoEnv is closed")

    def _observation(self, raw: dict, success: bool) -> Observation:
        robot = self._env.robots[0]
        data = self._env.sim.data
        arm_joints = tuple(robot.robot_joints)
        finger_joints = tuple(robot.gripper.joints)
        base_pos = np.array(data.get_body_xpos(_ROBOT_BASE_BODY), dtype=np.float64)
        base_rot = np.array(data.get_body_xmat(_ROBOT_BASE_BODY), dtype=np.float64)
        base_quat_wxyz = np.array(data.get_body_xquat(_ROBOT_BASE_BODY), dtype=np.float64)
        ee_pos = base_rot.T @ (np.asarray(raw["robot0_eef_pos"], dtype=np.float64) - base_pos)
        base_inverse = np.zeros(4)
        self._mujoco.mju_negQuat(base_inverse, base_quat_wxyz)
        ee_quat_wxyz = np.zeros(4)
        self._mujoco.mju_mulQuat(ee_quat_wxyz, base_inverse, _xyzw_to_wxyz(raw["robot0_eef_quat"]))
        gripper_qpos = np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64).copy()
        return Observation(
            agentview=_upright(raw["agentview_image"]),
            wrist=_upright(raw["robot0_eye_in_hand_image"]),
            joint_names=arm_joints + finger_joints,
            joint_positions=np.concatenate([np.asarray(raw["robot0_joint_pos"], dtype=np.float64), gripper_qpos]),
            ee_position=ee_pos,
            ee_quaternion=np.roll(ee_quat_wxyz, -1),
            gripper_qpos=gripper_qpos,
            state=libero_state(raw["robot0_eef_pos"], raw["robot0_eef_quat"], gripper_qpos),
            success=success,
        )
