"""The LIBERO bridge's parameters (one episode's settings), their defaults and their checks.

ROS-free so launch-file and config tests, evaluation and the node share one definition."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import yaml

from openvla_ros.sim.libero_env import ENV_HORIZON, GRIPPER_MODES, MAX_STEPS, RESET_RNG_MODES

MODES = ("lockstep", "realtime")
# What the camera topics carry: the rendered frame as it is, or OpenVLA's LIBERO image path
# applied to it (JPEG round trip, Lanczos-3 resize to 224 x 224; openvla_ros/tf_image.py).
IMAGE_PREPROCESS = ("none", "openvla")


@dataclass(frozen=True)
class BridgeConfig:
    task_suite: str = "libero_spatial"
    task_id: int = 0
    init_state_id: int = 0
    seed: int = 0
    reset_rng: str = "reseed"  # "openvla": the fixtures' placement OpenVLA's evaluation has (libero_env)
    camera_size: int = 256
    image_preprocess: str = "none"
    mode: str = "lockstep"
    control_rate_hz: float = 20.0  # realtime only
    # lockstep: re-send the frame (and step request) after this long without an action;
    # realtime: switch to zero motion after this long without a new action.
    action_timeout_s: float = 2.0
    # Actions stamped zero or further ahead of the bridge's clock than this are rejected: they cannot
    # answer a published frame, and in realtime mode would otherwise be applied as the latest action.
    max_future_stamp_s: float = 0.5
    num_steps_wait: int = 10
    max_steps: int = 0  # 0: the suite's default from MAX_STEPS
    gripper_postprocess: str = "openvla"
    call_policy_step: bool = True  # lockstep: call the policy's step service for every frame
    record_video: bool = False
    video_dir: str = "libero_videos"
    start_on_launch: bool = True  # begin the first episode without waiting for ~/reset

    @property
    def episode_steps(self) -> int:
        return self.max_steps or MAX_STEPS[self.task_suite]

    def validate(self) -> "BridgeConfig":
        """Return self; ValueError naming the bad parameter and what it accepts."""
        check = [
            (self.task_suite in MAX_STEPS, f"task_suite must be one of {sorted(MAX_STEPS)}, got {self.task_suite!r}"),
            (self.task_id >= 0, f"task_id must be >= 0, got {self.task_id}"),
            (self.init_state_id >= 0, f"init_state_id must be >= 0, got {self.init_state_id}"),
            (self.reset_rng in RESET_RNG_MODES, f"reset_rng must be one of {RESET_RNG_MODES}, got {self.reset_rng!r}"),
            (self.camera_size > 0, f"camera_size must be > 0 pixels, got {self.camera_size}"),
            (self.image_preprocess in IMAGE_PREPROCESS,
             f"image_preprocess must be one of {IMAGE_PREPROCESS}, got {self.image_preprocess!r}"),
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.control_rate_hz > 0, f"control_rate_hz must be > 0, got {self.control_rate_hz}"),
            (self.action_timeout_s > 0, f"action_timeout_s must be > 0, got {self.action_timeout_s}"),
            (self.max_future_stamp_s >= 0, f"max_future_stamp_s must be >= 0, got {self.max_future_stamp_s}"),
            (self.num_steps_wait >= 0, f"num_steps_wait must be >= 0, got {self.num_steps_wait}"),
            (self.max_steps >= 0, f"max_steps must be >= 0 (0 = suite default), got {self.max_steps}"),
            (self.gripper_postprocess in GRIPPER_MODES,
             f"gripper_postprocess must be one of {GRIPPER_MODES}, got {self.gripper_postprocess!r}"),
            (not self.record_video or bool(self.video_dir), "record_video needs a non-empty video_dir"),
        ]
        for ok, message in check:
            if not ok:
                raise ValueError(message)
        if self.num_steps_wait + self.episode_steps > ENV_HORIZON:
            raise ValueError(f"num_steps_wait + max_steps must be <= {ENV_HORIZON} (the env horizon), got "
                             f"{self.num_steps_wait} + {self.episode_steps}")
        return self

    @classmethod
    def from_values(cls, values: dict) -> "BridgeConfig":
        """Build from parameter values; integers given for float fields become floats, other
        wrong types raise ValueError naming the parameter."""
        converted = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value, expected = values[f.name], type(getattr(cls, f.name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not expected:
                raise ValueError(f"{f.name} must be a {expected.__name__}, got {value!r}")
            converted[f.name] = value
        unknown = sorted(set(values) - set(converted) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown bridge parameters {unknown}; expected some of {list(cls.names())}")
        return cls(**converted)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def launch_overrides(arguments: dict[str, str]) -> dict:
    """Typed parameter overrides from launch-argument strings; "" means "keep the params file's value".

    Strings are read as YAML scalars ("3" -> 3, "true" -> True, "0.5" -> 0.5), as ROS does for
    parameters given on the command line; the result is checked against BridgeConfig.
    """
    overrides = {name: yaml.safe_load(text) for name, text in arguments.items() if text != ""}
    BridgeConfig.from_values(overrides)
    return overrides
