"""`ActionQueue`: an action chunk executed one action per control tick, re-planned every K steps.

OpenVLA-OFT predicts a chunk of actions per forward pass. A controller ticking at the control
rate pops one action per tick. After `replan_every` actions of the current chunk the queue asks
for a new plan (K = chunk length executes the chunk open loop, as OFT's LIBERO evaluation does);
until the new chunk arrives it keeps executing what is left of the current one, and a new chunk
replaces the remainder. A chunk whose source frame is older than `max_age_ns` is dropped (on push
and at every tick), so the robot never executes a plan made from a stale view. Time is passed in
by the caller (nanoseconds of one clock: ROS time in the node), never read here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Chunk:
    actions: np.ndarray  # [chunk, action_dim]
    source_stamp_ns: int
    next_index: int = 0


class ActionQueue:
    def __init__(self, replan_every: int, max_age_ns: int) -> None:
        if replan_every < 1:
            raise ValueError(f"replan_every is {replan_every}; expected >= 1 (the chunk length runs it open loop)")
        if max_age_ns <= 0:
            raise ValueError(f"max_age_ns is {max_age_ns}; expected > 0")
        self.replan_every = replan_every
        self.max_age_ns = max_age_ns
        self._chunk: _Chunk | None = None
        self.dropped_stale = 0  # chunks dropped because their source frame went stale

    def push(self, actions: np.ndarray, source_stamp_ns: int, now_ns: int) -> bool:
        """Replace the current plan with `actions` [chunk, action_dim]; False (dropped) when stale."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] < 1:
            raise ValueError(f"a chunk must be [chunk >= 1, action_dim]; got shape {actions.shape}")
        if now_ns - source_stamp_ns > self.max_age_ns:
            self.dropped_stale += 1
            return False
        self._chunk = _Chunk(actions, source_stamp_ns)
        return True

    def pop(self, now_ns: int) -> np.ndarray | None:
        """The action for this tick, or None when there is none to execute (empty, used up or stale)."""
        chunk = self._chunk
        if chunk is None:
            return None
        if now_ns - chunk.source_stamp_ns > self.max_age_ns:
            self._chunk = None
            self.dropped_stale += 1
            return None
        if chunk.next_index >= chunk.actions.shape[0]:
            return None
        action = chunk.actions[chunk.next_index]
        chunk.next_index += 1
        return action

    @property
    def needs_plan(self) -> bool:
        """True when there is no chunk or `replan_every` of its actions have been executed."""
        return self._chunk is None or self._chunk.next_index >= min(self.replan_every, self._chunk.actions.shape[0])

    @property
    def executed(self) -> int:
        """Actions of the current chunk executed so far: after a pop, the popped action's 1-based step."""
        return 0 if self._chunk is None else self._chunk.next_index

    @property
    def source_stamp_ns(self) -> int | None:
        """The stamp of the frame the current chunk was planned from (None without a chunk)."""
        return None if self._chunk is None else self._chunk.source_stamp_ns

    @property
    def remaining(self) -> int:
        """Actions of the current chunk not executed yet."""
        return 0 if self._chunk is None else self._chunk.actions.shape[0] - self._chunk.next_index

    def clear(self) -> None:
        """Forget the current plan (a reset, a new instruction)."""
        self._chunk = None
