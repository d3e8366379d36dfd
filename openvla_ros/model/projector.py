"""OpenVLA's projector from vision features to the LLM width (`projector.fc1/fc2/fc3`)."""
from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Fused backbone: fc1 (Dv -> 4 Dv), GELU, fc2 (-> Dllm), GELU, fc3; single: fc1, GELU, fc2."""

    def __init__(self, vision_dim: int, llm_dim: int, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        if fused:
            hidden = 4 * vision_dim
            self.fc1 = nn.Linear(vision_dim, hidden)
            self.fc2 = nn.Linear(hidden, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act(self.fc1(features)))
        return self.fc3(self.act(x)) if self.fused else x
