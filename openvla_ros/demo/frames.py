"""Training frames for the demo model, rendered from LIBERO scenes.

Each episode starts from one of a task's fixed initial states and drives the arm with random
demo instructions (the decoded action each would produce, held for 1-5 control steps), taking a
frame after every segment. The frames therefore show the arm where closed-loop demo runs take it:
displaced in every direction, gripper open and closed. Deterministic for a given seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from openvla_ros.actions import ActionDecoder
from openvla_ros.demo.instructions import DEMO_UNNORM_KEY, INSTRUCTIONS, action_token_ids, normalized_target
from openvla_ros.sim.libero_env import LiberoEnv, postprocess_gripper

MAX_SEGMENT_STEPS = 5


@dataclass(frozen=True)
class Scene:
    task_suite: str
    task_id: int


# One scene per suite family the demo and eval run in, so no LIBERO layout is unfamiliar.
SCENES: tuple[Scene, ...] = (Scene("libero_object", 0), Scene("libero_spatial", 0), Scene("libero_goal", 0))


def env_action(instruction: str, decoder: ActionDecoder) -> np.ndarray:
    """The env-unit action a perfect demo model sends for `instruction` (decoded tokens, gripper
    postprocessed as the bridge does)."""
    action, _ = decoder.decode(action_token_ids(normalized_target(instruction), decoder), DEMO_UNNORM_KEY)
    return postprocess_gripper(action, "openvla")


@dataclass(frozen=True)
class RenderedFrames:
    images: np.ndarray  # uint8 [N, S, S, 3], upright agentview
    init_state_ids: np.ndarray  # int [N], the initial state each frame's episode started from


def render_frames(
    scenes: Sequence[Scene],
    init_state_ids: Sequence[int],
    frames_per_episode: int,
    decoder: ActionDecoder,
    seed: int,
    camera_size: int = 256,
    progress: Callable[[str], None] | None = None,
) -> RenderedFrames:
    """len(scenes) * len(init_state_ids) * frames_per_episode frames; each scene's env is built once."""
    if frames_per_episode < 1:
        raise ValueError(f"frames_per_episode must be >= 1, got {frames_per_episode}")
    if not scenes or not init_state_ids:
        raise ValueError("need at least one scene and one init state")
    rng = np.random.default_rng(seed)
    names = list(INSTRUCTIONS)
    frames: list[np.ndarray] = []
    origins: list[int] = []
    for scene in scenes:
        with LiberoEnv(scene.task_suite, scene.task_id, camera_size=camera_size, seed=seed) as env:
            for init_state_id in init_state_ids:
                obs = env.reset(init_state_id)
                for _ in range(frames_per_episode):
                    action = env_action(names[rng.integers(len(names))], decoder)
                    for _ in range(int(rng.integers(1, MAX_SEGMENT_STEPS + 1))):
                        obs = env.step(action)
                    frames.append(obs.agentview)
                    origins.append(init_state_id)
                if progress:
                    progress(f"[frames] {scene.task_suite}/{scene.task_id} init {init_state_id}: {len(frames)} frames")
    return RenderedFrames(np.stack(frames), np.array(origins))
