"""timm-free ViT featurizers of OpenVLA's fused vision backbone (DINOv2 + SigLIP).

Parameter names follow timm's `VisionTransformer` (as OpenVLA's checkpoints store them, with
layer scale renamed to `scale_factor`), and the numerics match timm 0.9: LayerNorm eps 1e-6,
qkv with bias, scaled-dot-product attention, the exact GELU (timm 0.9's default). OpenVLA
reads the patch tokens output by the second-to-last block, without the final norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openvla_ros.checkpoint import ViTSpec

LAYER_NORM_EPS = 1e-6


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu_approximate: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, spec.mlp_hidden, spec.gelu_approximate)
        self.ls2 = LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, kernel_size=spec.patch_size, stride=spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTFeaturizer(nn.Module):
    """images [B, 3, H, W] -> patch tokens [B, num_patches, D] from block `depth - 2`."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(spec)
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if spec.num_registers:
            self.reg_token = nn.Parameter(torch.zeros(1, spec.num_registers, dim))
        # The positional embedding covers the patches only (timm's no_embed_class for DINOv2-reg,
        # and SigLIP has no prefix tokens); prefix tokens are prepended after adding it.
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, dim))
        # Only the blocks up to the second-to-last one run; the last block's weights are still
        # part of the checkpoint, so it is kept to load (and account for) them.
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images) + self.pos_embed
        prefix = []
        if self.spec.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.spec.num_registers:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        for block in self.blocks[: self.spec.depth - 1]:
            x = block(x)
        return x[:, self.spec.num_prefix_tokens:]


class VisionBackbone(nn.Module):
    """pixel_values [B, 3 * n, H, W] -> concatenated patch features [B, num_patches, sum(D)].

    The first 3 channels feed `featurizer` (DINOv2), the next 3 `fused_featurizer` (SigLIP).
    """

    def __init__(self, specs: tuple[ViTSpec, ...]) -> None:
        super().__init__()
        self.featurizer = ViTFeaturizer(specs[0])
        self.fused_featurizer = ViTFeaturizer(specs[1]) if len(specs) > 1 else None

    @property
    def featurizers(self) -> list[ViTFeaturizer]:
        return [f for f in (self.featurizer, self.fused_featurizer) if f is not None]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        featurizers = self.featurizers
        expected = 3 * len(featurizers)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; expected [B, {expected}, H, W]")
        images = torch.split(pixel_values, 3, dim=1)
        return torch.cat([f(img) for f, img in zip(featurizers, images)], dim=2)
