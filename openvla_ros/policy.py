"""Backend-independent policy interface: one RGB image + an instruction -> one unnormalized action.

Every backend (torch reference, ONNX Runtime, Ascend OM) returns the same `Prediction`
(`policy_protocol.py`), so the policy node, the CLI and the benchmarks never branch on the backend.
This module must stay torch-free: backends are imported only when chosen.
"""
from __future__ import annotations

from pathlib import Path

from openvla_ros.policy_protocol import Policy

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "om")


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
