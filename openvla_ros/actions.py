"""OpenVLA action tokens -> continuous actions (numpy only, float64 like the official code).

The last `n_bins` ids of the unpadded text vocabulary are action tokens: id `V - 1` is bin centre
0 (-1 side), counting down. Normalized actions in [-1, 1] are mapped back with the chosen
dataset's 1st/99th percentiles where its mask is true and kept as they are where it is false.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

POSE_LABELS = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


def dimension_labels(action_dim: int) -> list[str]:
    """Names for the action dimensions: the end-effector delta + gripper for 7-D, a0.. otherwise."""
    if action_dim == len(POSE_LABELS):
        return list(POSE_LABELS)
    return [f"a{i}" for i in range(action_dim)]


class ActionDecoder:
    """Decodes generated token ids with one checkpoint's norm stats."""

    def __init__(self, norm_stats: dict[str, Any], vocab_size: int, pad_to_multiple_of: int = 0,
                 n_bins: int = 256) -> None:
        """`vocab_size` is the padded text vocab (`text_config.vocab_size`); like the official code,
        the action vocabulary ends at `V = vocab_size - pad_to_multiple_of`."""
        if n_bins < 2:
            raise ValueError(f"n_action_bins is {n_bins}; expected >= 2")
        self.norm_stats = norm_stats
        self.vocab_end = int(vocab_size) - int(pad_to_multiple_of)
        if self.vocab_end < n_bins:
            raise ValueError(f"unpadded vocab size {self.vocab_end} is smaller than the {n_bins} action bins")
        self.n_bins = n_bins
        bins = np.linspace(-1.0, 1.0, n_bins)
        self.bin_centers = (bins[:-1] + bins[1:]) / 2.0

    @classmethod
    def from_config(cls, config) -> ActionDecoder:
        """The decoder of a checkpoint's `OpenVLAConfig` (norm stats, vocab padding, bins)."""
        return cls(config.norm_stats, config.text_vocab_size, config.pad_to_multiple_of, config.n_action_bins)

    @property
    def keys(self) -> list[str]:
        return sorted(self.norm_stats)

    def select_key(self, unnorm_key: str | None) -> str:
        """The norm-stats key to use: `unnorm_key`, or the only one when it is None."""
        if unnorm_key is None:
            if len(self.norm_stats) != 1:
                raise ValueError(f"the checkpoint has {len(self.norm_stats)} norm-stats keys {self.keys}; "
                                 "choose one with unnorm_key (--unnorm-key)")
            return next(iter(self.norm_stats))
        if unnorm_key not in self.norm_stats:
            raise ValueError(f"unnorm_key {unnorm_key!r} is not in the checkpoint's norm stats; "
                             f"available keys: {self.keys}")
        return unnorm_key

    def _stats(self, unnorm_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.norm_stats[self.select_key(unnorm_key)]
        stats = entry.get("action", entry)
        if "q01" not in stats or "q99" not in stats:
            raise ValueError(f"norm stats {unnorm_key!r} lack action q01/q99")
        low = np.asarray(stats["q01"], dtype=np.float64)
        high = np.asarray(stats["q99"], dtype=np.float64)
        mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
        if low.shape != high.shape or mask.shape != low.shape or low.ndim != 1:
            raise ValueError(f"norm stats {unnorm_key!r}: q01 {low.shape}, q99 {high.shape} and mask "
                             f"{mask.shape} must be 1-D of the same length")
        return low, high, mask

    def action_dim(self, unnorm_key: str | None) -> int:
        return int(self._stats(self.select_key(unnorm_key))[0].shape[0])

    def decode(self, token_ids: Sequence[int], unnorm_key: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(action, normalized_action), both float64 [action_dim]."""
        low, high, mask = self._stats(self.select_key(unnorm_key))
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.shape != low.shape:
            raise ValueError(f"got {ids.size} action tokens; norm stats {unnorm_key!r} need {low.size}")
        indices = np.clip(self.vocab_end - ids - 1, 0, self.bin_centers.shape[0] - 1)
        normalized = self.bin_centers[indices]
        action = np.where(mask, 0.5 * (normalized + 1.0) * (high - low) + low, normalized)
        return action, normalized
