"""What the inference thread does next: the latest frame, ~/step requests and the rate gate.

Not thread-safe by itself: `PolicyCore` guards a `Schedule` with its lock. Time is passed in
(time.monotonic() seconds), never read here.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Finishes one ~/step request: None once its action is published, else why nothing was.
StepDone = Callable[[str | None], None]


@dataclass(frozen=True)
class Stamped:
    """One accepted input beside the camera frame (a wrist image, the robot state) with its header stamp."""

    value: np.ndarray  # a wrist image: uint8 HxWx3 RGB; the state: float64 [proprio_dim]
    stamp_ns: int


@dataclass(frozen=True)
class Frame:
    """One accepted camera frame. For a chunk policy (OpenVLA-OFT) the inference pairs it with the
    latest wrist image(s) and robot state (policy_core/extra_inputs.py); the frame alone drives
    scheduling."""

    seq: int
    image: np.ndarray  # uint8 HxWx3 RGB
    stamp_ns: int  # header stamp (node clock), echoed in the action's header
    received_unix_ns: int  # wall clock at callback entry, comparable across processes (bench-node)
    wrist: tuple[Stamped, ...] = ()  # paired at inference start, in the model's camera order
    state: Stamped | None = None  # paired at inference start when the model takes proprio


@dataclass(frozen=True)
class Job:
    """One inference to run: on `frame` (None: none received), for `step` (None: continuous mode)."""

    frame: Frame | None
    step: StepDone | None


class FrameSlot:
    """The latest frame; a new one replaces a frame not yet acted on (latest frame wins)."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._seq = 0
        self._consumed_seq = 0

    def put(self, image: np.ndarray, stamp_ns: int, received_unix_ns: int) -> bool:
        """Store a frame; True when it replaced one that was never acted on."""
        replaced = self.fresh
        self._seq += 1
        self._frame = Frame(self._seq, image, stamp_ns, received_unix_ns)
        return replaced

    @property
    def fresh(self) -> bool:
        """A frame is stored that no inference has taken yet."""
        return self._frame is not None and self._frame.seq != self._consumed_seq

    def take(self) -> Frame | None:
        """The latest frame (None if there is none), marked as acted on."""
        if self._frame is not None:
            self._consumed_seq = self._frame.seq
        return self._frame

    def clear(self) -> None:
        self._frame = None


class RateGate:
    """At most one start per 1 / rate_hz seconds."""

    def __init__(self) -> None:
        self._next_start = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next start is allowed (<= 0: now)."""
        return self._next_start - now

    def admit(self, now: float, rate_hz: float) -> None:
        self._next_start = now + 1.0 / rate_hz


class Schedule:
    """A ~/step request comes first (on the latest frame, acted on before or not); otherwise, in
    continuous mode, a frame not acted on yet once the rate gate allows."""

    def __init__(self) -> None:
        self.frames = FrameSlot()
        self._steps: deque[StepDone] = deque()
        self._gate = RateGate()

    def add_step(self, done: StepDone) -> None:
        self._steps.append(done)

    def fail_steps(self, reason: str) -> None:
        """Finish every waiting ~/step request with `reason`."""
        while self._steps:
            self._steps.popleft()(reason)

    def next_job(self, continuous: bool, rate_hz: float, now: float) -> tuple[Job | None, float | None]:
        """(the job to run now, None) or (None, seconds to wait before asking again; None: until
        something changes)."""
        if self._steps:
            return Job(self.frames.take(), self._steps.popleft()), None
        if not (continuous and self.frames.fresh):
            return None, None
        wait = self._gate.wait_s(now)
        if wait > 0:
            return None, wait
        self._gate.admit(now, rate_hz)
        return Job(self.frames.take(), None), None
