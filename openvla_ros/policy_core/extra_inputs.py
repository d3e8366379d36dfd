"""A chunk policy's (OpenVLA-OFT's) inputs beside the camera frame: the latest wrist image(s) and
robot state, and their pairing with the frame an inference runs on. ROS-free.

The agentview frame drives scheduling (latest frame wins, `schedule.py`). When an inference starts
on it, the latest wrist image(s) and state received are paired with it, and all of them must show
one moment: their stamps within `sync_tolerance_s` of each other (`input_sync.py`), else the
inference is refused as out of sync, a rejection. Pairing at inference start rather than on the
frame's arrival takes the inputs that arrived after their frame (DDS orders messages per topic
only), so inputs stamped alike, as the LIBERO bridge sends them, pair whatever order they came in.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from openvla_ros.input_sync import check_inputs_in_sync
from openvla_ros.oft import ChunkLayout
from openvla_ros.policy_core.schedule import Frame, Stamped
from openvla_ros.robot_state import STATE_TOPIC, state_names

IMAGE_TOPIC = "image"


def wrist_topic(index: int) -> str:
    """The topic of wrist camera `index` (0-based, in the model's camera order after the agentview):
    `wrist/image`, then `wrist2/image`, `wrist3/image`, ..."""
    return "wrist/image" if index == 0 else f"wrist{index + 1}/image"


def chunk_layout_of(policy: Any) -> ChunkLayout | None:
    """The chunk layout of a chunk policy (one with `predict_chunk`), None for a one-action policy."""
    return policy.layout if callable(getattr(policy, "predict_chunk", None)) else None


class LatestInputs:
    """The latest accepted wrist image of each wrist camera and the latest robot state."""

    def __init__(self, layout: ChunkLayout) -> None:
        self.wrist_topics = tuple(wrist_topic(i) for i in range(layout.num_images - 1))
        self.state_names = state_names(layout.proprio_dim) if layout.uses_proprio else None
        self._wrist: list[Stamped | None] = [None] * len(self.wrist_topics)
        self._state: Stamped | None = None

    def put_wrist(self, index: int, image: np.ndarray, stamp_ns: int) -> None:
        self._wrist[index] = Stamped(image, stamp_ns)

    def put_state(self, values: np.ndarray, stamp_ns: int) -> None:
        self._state = Stamped(values, stamp_ns)

    def clear(self) -> None:
        self._wrist = [None] * len(self.wrist_topics)
        self._state = None

    def pair(self, frame: Frame, tolerance_s: float) -> Frame:
        """`frame` with the latest wrist image(s) and state; InputsOutOfSync (a rejection) when one
        has not arrived yet or their stamps and the frame's lie more than `tolerance_s` apart."""
        stamps: dict[str, int | None] = {IMAGE_TOPIC: frame.stamp_ns}
        for topic, got in zip(self.wrist_topics, self._wrist):
            stamps[topic] = None if got is None else got.stamp_ns
        if self.state_names is not None:
            stamps[STATE_TOPIC] = None if self._state is None else self._state.stamp_ns
        check_inputs_in_sync(stamps, tolerance_s)
        return replace(frame, wrist=tuple(self._wrist), state=self._state if self.state_names is not None else None)


def stale_input(frame: Frame, now_ns: int, max_age_s: float) -> tuple[str, float] | None:
    """(topic, age in s) of the first of the frame's paired inputs older than `max_age_s`, or None."""
    paired = [*zip((wrist_topic(i) for i in range(len(frame.wrist))), frame.wrist),
              *([(STATE_TOPIC, frame.state)] if frame.state is not None else [])]
    for topic, got in paired:
        age_s = (now_ns - got.stamp_ns) * 1e-9
        if age_s > max_age_s:
            return topic, age_s
    return None
