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

from openvla_ros.checkpoint import UNUSED_KEY_PREFIXES, OpenVLAConfig, load_state_dict
from openvla_ros.model.projector import Projector
from openvla_ros.model.vit import VisionBackbone
from openvla_ros.safetensors_stream import CheckpointTensors



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

    @classmethod
    def skeleton(cls, config: OpenVLAConfig, dtype: torch.dtype) -> OpenVLA:
        """The architecture with no weights (parameters on the meta device) and its buffers in
        `dtype`, as `.to(dtype)` leaves them: `load_weights` then loads one part at a time."""
        with no_init_weights():  # allocated, never written: no page of it becomes resident
            model = cls(config)
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_floating_point():
                    module._buffers[name] = buffer.to(dtype)
        return model.eval()

    def check_official_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Official tensor shapes by name against the model: any missing or unexpected key (other
        than the unused heads) or a different shape is an error."""
        shapes = {k: tuple(v) for k, v in shapes.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
        model = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        missing, unexpected = sorted(set(model) - set(shapes)), sorted(set(shapes) - set(model))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the OpenVLA architecture from config.json: "
                             f"missing keys {_abbreviate(missing)}, unexpected keys {_abbreviate(unexpected)}")
        mismatched = [f"{k}: checkpoint {shapes[k]} vs model {v}" for k, v in model.items() if shapes[k] != v]
        if mismatched:
            raise ValueError(f"checkpoint tensor shapes do not match config.json: {_abbreviate(mismatched)}")

    def load_official_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load official tensors; any missing or unexpected key (other than the unused heads) is an error."""
        self.check_official_shapes({k: tuple(v.shape) for k, v in state.items()})
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}
        # assign: the parameters take the loaded tensors instead of copying them (half the peak memory).
        self.load_state_dict(state, strict=True, assign=True)

    def load_weights(self, tensors: CheckpointTensors, prefix: str, dtype: torch.dtype) -> None:
        """Load the parameters under `prefix` (e.g. "vision_backbone.") from `tensors`, each read
        and converted to `dtype` on its own (check the shapes first: `check_official_shapes`)."""
        for name, module, leaf in self._parameters_under(prefix):
            module._parameters[leaf] = nn.Parameter(tensors.read(name, dtype), requires_grad=False)

    def release_weights(self, prefix: str) -> None:
        """Drop the parameters under `prefix` back to the meta device (their memory is freed once
        nothing else holds them)."""
        for _name, module, leaf in self._parameters_under(prefix):
            module._parameters[leaf] = nn.Parameter(module._parameters[leaf].to("meta"), requires_grad=False)

    def _parameters_under(self, prefix: str):
        for module_name, module in self.named_modules():
            for leaf, param in module._parameters.items():
                name = f"{module_name}.{leaf}" if module_name else leaf
                if param is not None and name.startswith(prefix):
                    yield name, module, leaf

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
