"""Backend-independent policy interface: one RGB image + an instruction -> one unnormalized action.

Every backend (torch reference, ONNX Runtime, Ascend OM) returns the same `Prediction`, so the
policy node, the CLI and the benchmarks never branch on the backend. This module must stay
torch-free: backends are imported only when chosen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "om")


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


def load_policy(
    backend: str,
    model_dir: str | Path,
    unnorm_key: str | None = None,
    verify_checksums: bool = False,
    **options,
) -> Policy:
    """Load a policy for `backend` from `model_dir`.

    `model_dir` is a Hugging Face-format OpenVLA checkpoint for `torch` (an OpenVLA-OFT one when it
    holds `action_head--<step>_checkpoint.pt`: then the policy predicts chunks with
    `predict_chunk(images, instruction, state)`, options `num_images`, `use_proprio`, `chunk`), and a directory written
    by `openvla-ros export` (ONNX graphs + manifest.json) or `convert-om` (.om files +
    manifest.json) for `onnxruntime` / `om`. Backend-specific `options` are passed through
    (e.g. `allow_pickle` for torch, `provider` for onnxruntime, `device_id` for om).

    Damaged, incomplete or mismatched files raise a one-line `ModelFileError` naming the file.
    File sizes are always checked; `verify_checksums` also hashes every file of an export against
    its manifest (checkpoints carry no checksums: their safetensors headers, sizes and shard index
    are checked either way).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    if backend == "torch":
        from openvla_ros.oft import find_oft_files

        if find_oft_files(model_dir) is not None:
            from openvla_ros.model.torch_oft_policy import TorchOFTPolicy

            return TorchOFTPolicy.load(model_dir, unnorm_key=unnorm_key, **options)
        from openvla_ros.model.torch_policy import TorchPolicy

        return TorchPolicy.load(model_dir, unnorm_key=unnorm_key, **options)
    if backend in ("onnxruntime", "om"):
        from openvla_ros.runtime import load_runtime_policy

        return load_runtime_policy(backend, model_dir, unnorm_key=unnorm_key, verify_checksums=verify_checksums,
                                   **options)
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
