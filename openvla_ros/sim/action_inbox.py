"""Incoming policy actions for the bridge: validation of the action message content (one action,
or in lockstep an action chunk) and a thread-safe slot the simulator loop waits on (by frame stamp
in lockstep, latest in realtime)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from openvla_ros.actions import POSE_LABELS
from openvla_ros.sim.libero_env import ACTION_DIM, check_action


def parse_action(labels: Sequence[str], points: Sequence[Sequence[float]], chunks: bool) -> np.ndarray:
    """Validate a JointTrajectory's content: one point (or, with `chunks`, one or more: an action
    chunk executed point by point) of 7 finite values each; labels, when present, must be
    POSE_LABELS. Returns the values as [points, 7]; ValueError says what is wrong."""
    if not points or (len(points) > 1 and not chunks):
        expected = "at least one trajectory point" if chunks else "exactly one trajectory point"
        hint = "" if chunks else " (an action chunk is executed in lockstep mode only)"
        raise ValueError(f"expected {expected}, got {len(points)}{hint}")
    if len(labels) and tuple(labels) != POSE_LABELS:
        raise ValueError(f"joint_names must be {list(POSE_LABELS)} (or empty), got {list(labels)}")
    rows = []
    for index, point in enumerate(points):
        where = f"point {index}: " if len(points) > 1 else ""
        if len(point) != ACTION_DIM:
            raise ValueError(f"{where}expected {ACTION_DIM} positions, got {len(point)}")
        try:
            rows.append(check_action(point))
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None
    return np.stack(rows)


@dataclass(frozen=True)
class ReceivedAction:
    values: np.ndarray  # [points, 7]: one action, or a chunk executed point by point
    stamp_ns: int  # header.stamp of the frame the action was computed from
    received_at: float  # time.monotonic() at arrival


class ActionInbox:
    """Holds the latest valid action and, separately, the first one matching an awaited frame stamp
    (the observation's first stamp or the stamp of any re-send of it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: ReceivedAction | None = None
        self._awaited_ns: set[int] = set()
        self._matched: ReceivedAction | None = None
        self._interrupted = False

    def put(self, values: np.ndarray, stamp_ns: int) -> bool:
        """Store a validated action; returns True when it answers the awaited frame."""
        action = ReceivedAction(values, stamp_ns, time.monotonic())
        with self._cond:
            self._latest = action
            if self._matched is None and stamp_ns in self._awaited_ns:
                self._matched = action
                self._cond.notify_all()
                return True
            return False

    def expect(self, stamp_ns: int) -> None:
        """Await actions for the frame stamped `stamp_ns`; earlier matches are forgotten."""
        with self._cond:
            self._awaited_ns = {stamp_ns}
            self._matched = None

    def also_expect(self, stamp_ns: int) -> None:
        """The awaited frame was re-sent as `stamp_ns`: an action for it answers the same
        observation. Answers to the earlier stamps still count, so a policy whose round trip is
        longer than the re-send interval is not refused forever."""
        with self._cond:
            self._awaited_ns.add(stamp_ns)

    def wait_matched(self, timeout: float) -> ReceivedAction | None:
        """The action for the awaited frame, or None after `timeout` s or on interrupt()."""
        with self._cond:
            self._cond.wait_for(lambda: self._matched is not None or self._interrupted, timeout)
            return self._matched

    def latest(self) -> ReceivedAction | None:
        with self._cond:
            return self._latest

    def clear(self) -> None:
        """Forget everything (new episode): old actions must not drive the new one."""
        with self._cond:
            self._latest = None
            self._awaited_ns = set()
            self._matched = None
            self._interrupted = False

    def interrupt(self) -> None:
        """Wake a waiter now (reset requested, shutdown)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()
