"""Percentiles over the most recent durations, safe to record from one thread and read from another."""
from __future__ import annotations

import threading
from collections import deque

import numpy as np


class LatencyWindow:
    """Keeps the last `size` durations (milliseconds)."""

    def __init__(self, size: int = 1000) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, milliseconds: float) -> None:
        with self._lock:
            self._values.append(milliseconds)

    def percentiles(self, *qs: float) -> list[float] | None:
        """The q-th percentiles (0-100) of the window, or None while it is empty."""
        with self._lock:
            if not self._values:
                return None
            values = np.fromiter(self._values, dtype=np.float64)
        return [float(v) for v in np.percentile(values, qs)]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
