"""`write_tiny_oft_checkpoint`: a random OpenVLA-OFT checkpoint in the official on-disk format.

The OpenVLA folder of `write_tiny_checkpoint`, with norm stats that carry the proprio entry, plus
`action_head--0_checkpoint.pt` and (with proprio) `proprio_projector--0_checkpoint.pt`: torch
state dicts with the "module." prefix of DDP training, as official OFT checkpoints are saved.
Action dim, proprio dim and head depth are free, so tests cover other constants than LIBERO's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.model.oft import LEGACY_PREFIX, L1RegressionActionHead, ProprioProjector
from openvla_ros.model.tiny import write_tiny_checkpoint

DEFAULT_OFT_KEY = "libero_oft_demo"  # names the LIBERO platform: chunk 8 unless told otherwise


def _stats(rng: np.random.Generator, dim: int, gripper_last: bool) -> dict:
    """Plausible per-dim bounds (q01 < q99, min < q01, q99 < max); the last action dim unmasked."""
    centre = rng.uniform(-0.5, 0.5, dim)
    spread = rng.uniform(0.1, 0.9, dim)
    q01, q99 = centre - spread, centre + spread
    stats = {"q01": q01, "q99": q99, "min": q01 - 0.1, "max": q99 + 0.1, "mean": centre, "std": spread / 2}
    out = {k: [round(float(v), 4) for v in values] for k, values in stats.items()}
    out["mask"] = [True] * (dim - 1) + [not gripper_last]
    return out


def _random_component(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) matrices, biases 0.1 N(0, 1), LayerNorm weights near 1; keys with "module."."""
    state = {}
    for name, param in sorted(module.state_dict().items()):
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and name.endswith("weight"):  # LayerNorm scale
            value = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            value = 0.1 * noise
        else:
            value = noise / float(np.sqrt(param.shape[1]))
        state[LEGACY_PREFIX + name] = value.contiguous()
    return state


def write_tiny_oft_checkpoint(out: str | Path, seed: int = 0, size: str = "tiny", action_dim: int = 7,
                              proprio_dim: int = 8, head_blocks: int = 2, unnorm_key: str = DEFAULT_OFT_KEY) -> Path:
    """Write a random OFT checkpoint to `out`; `proprio_dim=0` leaves out the proprio projector."""
    if action_dim < 1 or proprio_dim < 0 or head_blocks < 0:
        raise ValueError(f"action_dim {action_dim}, proprio_dim {proprio_dim}, head_blocks {head_blocks}: "
                         "expected action_dim >= 1, proprio_dim >= 0, head_blocks >= 0")
    out = write_tiny_checkpoint(out, seed=seed, size=size)
    raw = json.loads((out / "config.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(seed)
    entry = {"action": _stats(rng, action_dim, gripper_last=True), "num_trajectories": 50, "num_transitions": 5000}
    if proprio_dim:
        entry["proprio"] = _stats(rng, proprio_dim, gripper_last=False)
    raw["norm_stats"] = {unnorm_key: entry}
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    llm_dim = OpenVLAConfig.from_dict(raw).llm_dim
    generator = torch.Generator().manual_seed(seed + 2)
    # The head runs per chunk step, so its weights do not depend on the chunk length.
    head = L1RegressionActionHead(llm_dim, llm_dim, action_dim, chunk=1, num_blocks=head_blocks)
    torch.save(_random_component(head, generator), out / "action_head--0_checkpoint.pt")
    if proprio_dim:
        projector = ProprioProjector(proprio_dim, llm_dim)
        torch.save(_random_component(projector, generator), out / "proprio_projector--0_checkpoint.pt")
    return out
