"""`OpenVLA`: our implementation of the official architecture, loading official checkpoints as is.

Vision backbone -> projector -> Llama. The projected patch embeddings go right after the BOS
token; the language model is transformers' `LlamaForCausalLM` built from `text_config`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import no_init_weights

from openvla_ros.checkpoint import OpenVLAConfig, load_state_dict
from openvla_ros.model.projector import Projector
from openvla_ros.model.vit import VisionBackbone

# Checkpoint tensors the forward pass never reads: SigLIP's attention-pool head and the final
# norms after the last block (OpenVLA takes the second-to-last block's output).
UNUSED_KEY_PREFIXES = (
    "vision_backbone.fused_featurizer.attn_pool.",
    "vision_backbone.featurizer.norm.",
    "vision_backbone.fused_featurizer.norm.",
)


class OpenVLA(nn.Module):
    def __init__(self, config: OpenVLAConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.vision_backbone = VisionBackbone(config.vision)
        self.projector = Projector(config.vision_dim, config.llm_dim, fused=config.use_fused_vision_backbone)
        llm_config = LlamaConfig(**config.text_config)
        llm_config._attn_implementation = attn_implementation
        self.language_model = LlamaForCausalLM(llm_config)

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, allow_pickle: bool = False,
                        dtype: torch.dtype = torch.float32) -> OpenVLA:
        """Build from `config.json` and load the weights strictly (unused official heads aside)."""
        config = OpenVLAConfig.load(checkpoint_dir)
        # Random init would be overwritten by the checkpoint anyway; skipping it saves minutes at 7B.
        with no_init_weights():
            model = cls(config)
        model.load_official_state_dict(load_state_dict(checkpoint_dir, allow_pickle=allow_pickle, framework="pt"))
        return model.to(dtype).eval()

    def load_official_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load official tensors; any missing or unexpected key (other than the unused heads) is an error."""
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the OpenVLA architecture from config.json: "
                             f"missing keys {_abbreviate(missing)}, unexpected keys {_abbreviate(unexpected)}")
        mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                      for k, v in self.state_dict().items() if tuple(state[k].shape) != tuple(v.shape)]
        if mismatched:
            raise ValueError(f"checkpoint tensor shapes do not match config.json: {_abbreviate(mismatched)}")
        # assign: the parameters take the loaded tensors instead of copying them (half the peak memory).
        self.load_state_dict(state, strict=True, assign=True)

    def multimodal_embeddings(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[BOS embedding, projected patches, embeddings of the rest of the prompt] -> [B, L, Dllm]."""
        patches = self.projector(self.vision_backbone(pixel_values))
        return self.splice_patches(patches, input_ids)

    def splice_patches(self, patch_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Insert projected patch embeddings after the first (BOS) token of `input_ids`."""
        text = self.language_model.get_input_embeddings()(input_ids)
        return torch.cat([text[:, :1], patch_embeds.to(text.dtype), text[:, 1:]], dim=1)


def _abbreviate(items: list[str], limit: int = 12) -> str:
    if len(items) <= limit:
        return str(items)
    return f"{items[:limit]} and {len(items) - limit} more"
