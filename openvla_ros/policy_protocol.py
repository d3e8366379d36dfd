"""What every backend's policy is and returns: `Prediction` and the `Policy` protocol.

A leaf module (numpy only): the backends (`model/torch_policy.py`, `runtime/`) import it, and
`policy.py`, which loads them, imports it too, so no import runs in a cycle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One inference result."""

    action: np.ndarray  # float64 [action_dim], unnormalized with the chosen norm stats
    normalized_action: np.ndarray  # float64 [action_dim], bin centres in [-1, 1]
    action_token_ids: list[int]
    prompt_ids: list[int]
    unnorm_key: str
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage name -> milliseconds

    def to_json(self) -> dict:
        return {
            "action": [float(v) for v in self.action],
            "normalized_action": [float(v) for v in self.normalized_action],
            "action_token_ids": [int(t) for t in self.action_token_ids],
            "prompt_ids": [int(t) for t in self.prompt_ids],
            "unnorm_key": self.unnorm_key,
            "timings_ms": {k: float(v) for k, v in self.timings_ms.items()},
        }


class Policy(Protocol):
    """What every backend provides."""

    backend: str
    model_name: str
    action_dim: int
    unnorm_key: str

    def predict(self, image: np.ndarray, instruction: str) -> Prediction:
        """image: uint8 HxWx3 RGB of any size; raises InputRejected (a ValueError) on input the model
        cannot take, anything else on a backend fault."""

    def check_instruction(self, instruction: str) -> None:
        """Raise InstructionRejected unless `predict` can take `instruction`: visible text without
        control characters whose prompt fits the model (an export's static token budget). Tokenizes
        only, so it is cheap enough for a subscription callback."""

    def close(self) -> None:
        """Release backend resources (device memory, sessions); idempotent."""
