"""An official OpenVLA checkpoint on disk (Hugging Face format), read without torch.

`OpenVLAConfig.load(dir)` parses `config.json`: the Llama `text_config`, one `ViTSpec` per
`timm_model_ids` entry (dims from the timm id, replaced by `vision_backbone_overrides` when the
checkpoint carries them), the action norm stats and the vocabulary padding. `find_weight_files`
applies the weight-file policy (safetensors, single or sharded; pickle only when allowed) and
`load_state_dict` reads the tensors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from openvla_ros.model_files import MissingModelFile, ModelFileError, read_json, raise_first
from openvla_ros.safetensors_check import CHECKPOINT_REMEDY, SafetensorsHeader, check_safetensors

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Checkpoint tensors the forward pass never reads: SigLIP's attention-pool head and the final
# norms after the last block (OpenVLA takes the second-to-last block's output).
UNUSED_KEY_PREFIXES = (
    "vision_backbone.fused_featurizer.attn_pool.",
    "vision_backbone.featurizer.norm.",
    "vision_backbone.fused_featurizer.norm.",
)

# Full dims of the timm ViT families OpenVLA uses: (embed_dim, depth, num_heads, mlp_ratio).
VIT_FAMILIES: dict[str, tuple[int, int, int, float]] = {
    "vit_so400m": (1152, 27, 16, 3.7362),
    "vit_large": (1024, 24, 16, 4.0),
    "vit_base": (768, 12, 12, 4.0),
    "vit_small": (384, 12, 6, 4.0),
}
OVERRIDE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")
# timm act_layer names a checkpoint may use in `timm_override_act_layers` -> torch GELU approximation.
GELU_ACT_LAYERS = {"gelu": "none", "gelu_tanh": "tanh"}


@dataclass(frozen=True)
class ViTSpec:
    """One timm VisionTransformer featurizer as OpenVLA builds it (`num_classes=0`)."""

    timm_id: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    image_size: int
    class_token: bool
    num_registers: int
    layer_scale: bool
    gelu_approximate: str  # "none" (exact erf GELU) or "tanh"

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_registers

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def from_timm_id(cls, timm_id: str, image_size: int, overrides: dict[str, Any] | None = None,
                     act_layer: str | None = None) -> ViTSpec:
        """Dims from the timm model id (e.g. `vit_large_patch14_reg4_dinov2.lvd142m`), then overrides."""
        family = next((name for name in VIT_FAMILIES if timm_id.startswith(name + "_")), None)
        patch = re.search(r"_patch(\d+)", timm_id)
        if family is None or patch is None:
            raise ValueError(f"unsupported timm model id {timm_id!r}; expected a ViT of the families "
                             f"{sorted(VIT_FAMILIES)} with a _patchN size")
        embed_dim, depth, num_heads, mlp_ratio = VIT_FAMILIES[family]
        if overrides:
            unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
            if unknown:
                raise ValueError(f"vision_backbone_overrides for {timm_id!r} has unknown keys {unknown}; "
                                 f"expected some of {list(OVERRIDE_KEYS)}")
            embed_dim = int(overrides.get("embed_dim", embed_dim))
            depth = int(overrides.get("depth", depth))
            num_heads = int(overrides.get("num_heads", num_heads))
            mlp_ratio = float(overrides.get("mlp_ratio", mlp_ratio))
        registers = re.search(r"_reg(\d+)", timm_id)
        is_siglip = "siglip" in timm_id
        is_dinov2 = "dinov2" in timm_id
        # SigLIP ViTs have no class token; DINOv2 ViTs carry layer scale. Both use the exact GELU
        # in timm 0.9.x, the version the official code pins (later timm gave SigLIP the tanh GELU;
        # the OFT fixture's actions match to 1e-5 only with the exact one).
        approximate = "none"
        if act_layer is not None:
            if act_layer not in GELU_ACT_LAYERS:
                raise ValueError(f"unsupported timm act layer override {act_layer!r} for {timm_id!r}; "
                                 f"expected one of {sorted(GELU_ACT_LAYERS)} or null")
            approximate = GELU_ACT_LAYERS[act_layer]
        spec = cls(
            timm_id=timm_id,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=int(patch.group(1)),
            image_size=int(image_size),
            class_token=not is_siglip,
            num_registers=int(registers.group(1)) if registers else 0,
            layer_scale=is_dinov2,
            gelu_approximate=approximate,
        )
        if spec.embed_dim % spec.num_heads:
            raise ValueError(f"{timm_id}: embed_dim {spec.embed_dim} is not divisible by num_heads {spec.num_heads}")
        if spec.image_size % spec.patch_size:
            raise ValueError(f"{timm_id}: image size {spec.image_size} is not a multiple of patch {spec.patch_size}")
        if spec.depth < 2:
            raise ValueError(f"{timm_id}: depth {spec.depth} < 2; OpenVLA takes the second-to-last block")
        return spec


@dataclass(frozen=True)
class OpenVLAConfig:
    """The fields of an official `config.json` that the model and the action decoder need."""

    text_config: dict[str, Any]
    vision: tuple[ViTSpec, ...]
    norm_stats: dict[str, Any]
    n_action_bins: int
    pad_to_multiple_of: int
    pad_token_id: int
    image_sizes: tuple[int, ...]
    use_fused_vision_backbone: bool
    arch_specifier: str

    @property
    def vision_dim(self) -> int:
        """Feature width of the (fused) vision backbone output."""
        return sum(spec.embed_dim for spec in self.vision)

    @property
    def llm_dim(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def text_vocab_size(self) -> int:
        return int(self.text_config["vocab_size"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OpenVLAConfig:
        if raw.get("model_type") != "openvla":
            raise ValueError(f"config.json model_type is {raw.get('model_type')!r}; expected 'openvla'")
        for key in ("text_config", "timm_model_ids", "image_sizes"):
            if key not in raw:
                raise ValueError(f"config.json lacks {key!r}, which every OpenVLA checkpoint has")
        text_config = dict(raw["text_config"])
        if "vocab_size" not in text_config or "hidden_size" not in text_config:
            raise ValueError("config.json text_config needs vocab_size and hidden_size")
        timm_ids = list(raw["timm_model_ids"])
        fused = bool(raw.get("use_fused_vision_backbone", len(timm_ids) == 2))
        if len(timm_ids) != (2 if fused else 1):
            raise ValueError(f"config.json has {len(timm_ids)} timm_model_ids with "
                             f"use_fused_vision_backbone={fused}; expected {2 if fused else 1}")
        image_sizes = tuple(int(s) for s in raw["image_sizes"])
        if len(image_sizes) < len(timm_ids):
            raise ValueError(f"config.json image_sizes {list(image_sizes)} has fewer entries than timm_model_ids")
        overrides = raw.get("vision_backbone_overrides") or [None] * len(timm_ids)
        act_layers = raw.get("timm_override_act_layers") or [None] * len(timm_ids)
        if len(overrides) != len(timm_ids) or len(act_layers) != len(timm_ids):
            raise ValueError("config.json vision_backbone_overrides / timm_override_act_layers need one "
                             f"entry per timm_model_ids entry ({len(timm_ids)})")
        vision = tuple(ViTSpec.from_timm_id(tid, size, ovr, act)
                       for tid, size, ovr, act in zip(timm_ids, image_sizes, overrides, act_layers))
        if len({spec.num_patches for spec in vision}) != 1:
            raise ValueError(f"the fused featurizers give different patch counts "
                             f"{[spec.num_patches for spec in vision]}; they must match to concatenate")
        pad_token_id = raw.get("pad_token_id", text_config.get("pad_token_id"))
        return cls(
            text_config=text_config,
            vision=vision,
            norm_stats=dict(raw.get("norm_stats") or {}),
            n_action_bins=int(raw.get("n_action_bins", 256)),
            pad_to_multiple_of=int(raw.get("pad_to_multiple_of", 0) or 0),
            pad_token_id=int(pad_token_id) if pad_token_id is not None else 0,
            image_sizes=image_sizes,
            use_fused_vision_backbone=fused,
            arch_specifier=str(raw.get("arch_specifier", "no-align+fused-gelu-mlp")),
        )

    @classmethod
    def load(cls, checkpoint_dir: str | Path) -> OpenVLAConfig:
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {checkpoint_dir}; expected an OpenVLA checkpoint directory")
        return cls.from_dict(read_json(path, CHECKPOINT_REMEDY))


def _index_files(index_path: Path) -> list[Path]:
    index = read_json(index_path, CHECKPOINT_REMEDY)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no weight_map")
    files = [index_path.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise MissingModelFile(missing[0], f"missing ({index_path.name} names {len(files)} shards, "
                                           f"{len(missing)} are not here)", CHECKPOINT_REMEDY)
    return files


def find_weight_files(checkpoint_dir: str | Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a checkpoint: safetensors (single or sharded) first, pickle only if allowed.

    Pickle files can execute code when loaded, so they are refused unless `allow_pickle` is set
    (and then read with `torch.load(weights_only=True)`).
    """
    root = Path(checkpoint_dir)
    if (root / SAFETENSORS_FILE).is_file():
        return [root / SAFETENSORS_FILE]
    if (root / SAFETENSORS_INDEX).is_file():
        return _index_files(root / SAFETENSORS_INDEX)
    shards = sorted(root.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    if (root / PICKLE_INDEX).is_file():
        pickles = _index_files(root / PICKLE_INDEX)
    else:
        pickles = sorted(p for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES) if root.is_dir() else []
    if not pickles:
        # An export directory carries config.json too; say which backend loads it.
        export_hint = ("; it holds manifest.json: an `openvla-ros export` / `convert-om` directory, for the "
                       "onnxruntime or om backend" if (root / "manifest.json").is_file() else "")
        raise FileNotFoundError(f"no weights in {root}: expected {SAFETENSORS_FILE} or "
                                f"{SAFETENSORS_INDEX} with model-*-of-*.safetensors shards{export_hint}")
    if not allow_pickle:
        raise ValueError(f"{root} holds only pickle weights ({', '.join(p.name for p in pickles)}); loading "
                         "pickle can run arbitrary code, so it is refused. Convert the checkpoint to "
                         "safetensors, or pass --allow-pickle (allow_pickle=True) if you trust it.")
    return pickles


def weight_file_problems(checkpoint_dir: str | Path, files: list[Path],
                         on_checked: Callable[[Path, SafetensorsHeader], None] | None = None) -> list[ModelFileError]:
    """Damaged safetensors files, and shards that disagree with the index (headers and sizes only:
    one small read per file); pickle files are not checked."""
    index = Path(checkpoint_dir) / SAFETENSORS_INDEX
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    uses_index = index.is_file() and safetensors != [Path(checkpoint_dir) / SAFETENSORS_FILE]
    return check_safetensors(safetensors, index if uses_index else None, on_checked=on_checked)


def load_state_dict(checkpoint_dir: str | Path, allow_pickle: bool = False, framework: str = "numpy") -> dict:
    """All tensors of a checkpoint by name, as numpy arrays (`framework="numpy"`) or torch tensors ("pt").

    bfloat16 weights need `framework="pt"` (numpy has no bfloat16); pickle weights need torch too.
    """
    if framework not in ("numpy", "pt"):
        raise ValueError(f"framework {framework!r} is not supported; expected 'numpy' or 'pt'")
    files = find_weight_files(checkpoint_dir, allow_pickle=allow_pickle)
    raise_first(weight_file_problems(checkpoint_dir, files), checkpoint_dir)
    state: dict = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework=framework) as f:
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        else:
            import torch

            loaded = torch.load(path, map_location="cpu", weights_only=True)
            tensors = {k: (v if framework == "pt" else v.numpy()) for k, v in loaded.items()}
        duplicated = sorted(set(tensors) & set(state))
        if duplicated:
            raise ValueError(f"{path.name} repeats tensors already loaded from another shard: {duplicated[:5]}")
        state.update(tensors)
    return state
