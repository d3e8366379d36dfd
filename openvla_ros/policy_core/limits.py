"""The action_limits parameter: per-dimension [min, max] clipping of unnormalized actions."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def parse_action_limits(values: Iterable[float], action_dim: int | None) -> np.ndarray | None:
    """[min0, max0, ...] -> float64 [dim, 2], or None for no clipping ([] or [0.0])."""
    values = [float(v) for v in values]
    if values in ([], [0.0]):
        return None
    if len(values) % 2 or (action_dim is not None and len(values) != 2 * action_dim):
        expected = f"2 x {action_dim} = {2 * action_dim}" if action_dim is not None else "an even number of"
        raise ValueError(f"action_limits has {len(values)} values; expected {expected} values "
                         "[min0, max0, min1, max1, ...] or [] for no clipping")
    limits = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    bad = [i for i, (lo, hi) in enumerate(limits) if not lo <= hi]
    if bad:
        raise ValueError(f"action_limits: min > max (or NaN) for dimension(s) {bad}")
    return limits


def clip(actions: np.ndarray, limits: np.ndarray | None) -> np.ndarray:
    """`actions` [..., dim] clipped to `limits` [dim, 2] (the same array when there are none)."""
    return actions if limits is None else np.clip(actions, limits[:, 0], limits[:, 1])
