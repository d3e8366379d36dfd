"""OpenVLA-OFT in torch: the proprio projector, the L1-regression action head and the one-pass forward.

The components follow the official OFT modules (`prismatic/models/projectors.py`,
`action_heads.py`) in structure and parameter names: `ProprioProjector` is fc1, exact GELU, fc2;
`MLPResNet` is LayerNorm, fc1, ReLU, residual blocks of (LayerNorm, Linear, ReLU), LayerNorm, fc2
(LayerNorm eps 1e-5). The head reads the last hidden states of `chunk x action_dim` consecutive
positions, regroups them per step ([chunk, action_dim * hidden]) and maps each step to one action.
Which positions: OFT's predict_action slices from index `patches + prompt tokens after BOS`, which
is the last prompt token (the 29871 space), so the window is that token and the first
`chunk x action_dim - 1` placeholders; the stop token and the last placeholder are not read.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from openvla_ros.model.openvla import OpenVLA
from openvla_ros.oft import ChunkLayout, OFTFiles

LEGACY_PREFIX = "module."  # DDP-wrapped state dicts, as official OFT checkpoints are saved
HEAD_BLOCK_KEY = re.compile(r"^model\.mlp_resnet_blocks\.(\d+)\.")


class ProprioProjector(nn.Module):
    """Normalized proprio [B, proprio_dim] -> one LLM-width embedding [B, llm_dim]."""

    def __init__(self, proprio_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(proprio)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Action hidden states [B, chunk * action_dim, llm_dim] -> normalized actions [B, chunk, action_dim]."""

    def __init__(self, llm_dim: int, hidden_dim: int, action_dim: int, chunk: int, num_blocks: int) -> None:
        super().__init__()
        self.chunk = chunk
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, hidden_dim, action_dim)

    def forward(self, action_hidden: torch.Tensor) -> torch.Tensor:
        return self.model(action_hidden.reshape(action_hidden.shape[0], self.chunk, -1))


def load_component(path: Path) -> dict[str, torch.Tensor]:
    """A component state dict, read as tensors only (`weights_only=True`), "module." prefix removed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or non-tensor pickle: one line naming the file
        raise ValueError(f"{path}: not a readable tensor state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k[len(LEGACY_PREFIX):] if k.startswith(LEGACY_PREFIX) else k: v for k, v in state.items()}


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"{path.name} lacks {key!r}; expected an L1RegressionActionHead / ProprioProjector "
                         f"state dict (keys: {sorted(state)[:6]} ...)")
    return tuple(state[key].shape)


def head_dims(state: dict[str, torch.Tensor], llm_dim: int, path: Path) -> tuple[int, int, int]:
    """(action_dim, hidden_dim, num_blocks) of an action head state dict, from its weight shapes."""
    action_dim, hidden_dim = _shape(state, "model.fc2.weight", path)
    fc1_out, fc1_in = _shape(state, "model.fc1.weight", path)
    if fc1_in != action_dim * llm_dim or fc1_out != hidden_dim:
        raise ValueError(f"{path.name}: fc1 is {fc1_out}x{fc1_in}, expected {hidden_dim}x{action_dim * llm_dim} "
                         f"(action_dim {action_dim} x LLM width {llm_dim}); is this the head of this model?")
    blocks = {int(m.group(1)) for key in state if (m := HEAD_BLOCK_KEY.match(key))}
    if blocks != set(range(len(blocks))):
        raise ValueError(f"{path.name}: MLPResNet blocks {sorted(blocks)} are not numbered 0..n-1")
    return action_dim, hidden_dim, len(blocks)


def proprio_dim_of(state: dict[str, torch.Tensor], llm_dim: int, path: Path) -> int:
    out_dim, proprio_dim = _shape(state, "fc1.weight", path)
    if out_dim != llm_dim or _shape(state, "fc2.weight", path) != (llm_dim, llm_dim):
        raise ValueError(f"{path.name}: projects to {out_dim}, but the LLM width is {llm_dim}")
    return proprio_dim


class OpenVLAOFT(nn.Module):
    """OpenVLA + proprio projector + L1 action head: one bidirectional pass -> normalized action chunk."""

    def __init__(self, vla: OpenVLA, action_head: L1RegressionActionHead,
                 proprio_projector: ProprioProjector | None, layout: ChunkLayout) -> None:
        super().__init__()
        self.vla = vla
        self.action_head = action_head
        self.proprio_projector = proprio_projector
        self.layout = layout

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, files: OFTFiles, chunk: int, num_images: int,
                        normalization: str, use_proprio: bool | None = None, allow_pickle: bool = False,
                        dtype: torch.dtype = torch.float32) -> OpenVLAOFT:
        """The OpenVLA weights plus the OFT components; constants from the components' weight shapes.

        `use_proprio` None: use the proprio projector when the checkpoint has one.
        """
        vla = OpenVLA.from_pretrained(checkpoint_dir, allow_pickle=allow_pickle, dtype=torch.float32)
        llm_dim = vla.config.llm_dim
        head_state = load_component(files.action_head)
        action_dim, hidden_dim, num_blocks = head_dims(head_state, llm_dim, files.action_head)
        if use_proprio and files.proprio_projector is None:
            raise ValueError(f"use_proprio is set but {checkpoint_dir} has no proprio_projector--<step>_checkpoint.pt")
        projector = None
        if files.proprio_projector is not None and use_proprio is not False:
            projector_state = load_component(files.proprio_projector)
            projector = ProprioProjector(proprio_dim_of(projector_state, llm_dim, files.proprio_projector), llm_dim)
            _load_strict(projector, projector_state, files.proprio_projector)
        layout = ChunkLayout(chunk=chunk, action_dim=action_dim,
                             proprio_dim=projector.fc1.in_features if projector is not None else 0,
                             num_images=num_images, normalization=normalization)
        head = L1RegressionActionHead(llm_dim, hidden_dim, action_dim, chunk, num_blocks)
        _load_strict(head, head_state, files.action_head)
        return cls(vla, head, projector, layout).to(dtype).eval()

    def patch_embeddings(self, pixel_values: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """pixel_values [1, 6 * num_images, H, W] -> [1, num_images * P (+1 proprio), llm_dim]."""
        per_image = 3 * len(self.vla.vision_backbone.featurizers)
        expected = per_image * self.layout.num_images
        if pixel_values.shape[1] != expected:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels; expected {expected} "
                             f"({self.layout.num_images} images x {per_image})")
        images = torch.split(pixel_values, per_image, dim=1)
        patches = torch.cat([self.vla.projector(self.vla.vision_backbone(image)) for image in images], dim=1)
        if self.proprio_projector is None:
            return patches
        return torch.cat([patches, self.proprio_projector(proprio)[:, None]], dim=1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                proprio: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [1, T] = prompt (ending with the space token), placeholders, stop -> [1, chunk, action_dim]."""
        return self.action_head(self.action_hidden(pixel_values, input_ids, proprio))

    def action_hidden(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                      proprio: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states the action head reads: [1, chunk * action_dim, llm_dim]."""
        patches = self.patch_embeddings(pixel_values, proprio)
        lm = self.vla.language_model
        text = lm.get_input_embeddings()(input_ids)
        n_actions = self.layout.num_action_tokens
        placeholders = torch.zeros(input_ids.shape[1], dtype=torch.bool)
        placeholders[-1 - n_actions:-1] = True
        text = torch.where(placeholders[None, :, None], torch.zeros_like(text), text)
        embeds = torch.cat([text[:, :1], patches.to(text.dtype), text[:, 1:]], dim=1)
        length = embeds.shape[1]
        # A 4-D all-true mask is used by transformers as given: every position attends to every position.
        everywhere = torch.ones(1, 1, length, length, dtype=torch.bool)
        hidden = lm.model(inputs_embeds=embeds, attention_mask=everywhere, use_cache=False).last_hidden_state
        first = patches.shape[1] + input_ids.shape[1] - n_actions - 2  # the last prompt token (see module doc)
        return hidden[:, first:first + n_actions]


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ValueError(f"{path.name} does not match {type(module).__name__}: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")
    module.load_state_dict(state, strict=True)
