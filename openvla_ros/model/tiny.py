"""`write_tiny_checkpoint`: a random OpenVLA checkpoint in the official on-disk format.

Same files and field names as an official Hugging Face release (config.json with
`vision_backbone_overrides`, model.safetensors with official key names including the unused
heads, preprocessor_config.json, tokenizer files, generation_config.json), at test (`tiny`) or
benchmark (`small`) size. The tokenizer is a real fast tokenizer: a Llama-style BPE trained in
code on robot instructions, padded with extra pieces so the last 256 ids of the unpadded vocab
are action tokens, then `<PAD>`. Weights are seeded and scaled so logits are well separated and
greedy decoding lands on action tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.model.openvla import OpenVLA
from openvla_ros.processing import SPACE_TOKEN
from openvla_ros.safetensors_stream import write_safetensors

TIMM_IDS = ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224")
IMAGE_SIZE = 224
PAD_TO_MULTIPLE_OF = 64
N_ACTION_BINS = 256
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
PAD_TOKEN = "<PAD>"
ACTION_LOGIT_BOOST = 4.0  # lm_head rows of action tokens are scaled up so they win the argmax
# DINOv2 uses ImageNet statistics, SigLIP maps to [-1, 1].
BACKBONE_NORMALIZATION = (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


@dataclass(frozen=True)
class TinySize:
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_intermediate: int
    vits: tuple[dict, dict]
    text_vocab: int  # unpadded, before <PAD>
    dtype: str = "float32"  # the weights' dtype in model.safetensors (and config.json's torch_dtype)


SIZES: dict[str, TinySize] = {
    "tiny": TinySize(32, 2, 2, 96, ({"embed_dim": 32, "depth": 3, "num_heads": 2, "mlp_ratio": 4.0},
                                    {"embed_dim": 24, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0}), 1024),
    "small": TinySize(256, 4, 4, 688, ({"embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 4.0},
                                       {"embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 4.0}), 32000),
    # OpenVLA-7B's real widths (Llama-2-7B, DINOv2 ViT-L/14, SigLIP so400m/14) in bfloat16 like the
    # official release; its 32 LLM layers are usually cut down (`llm_layers`) to measure the export.
    "7b-widths": TinySize(4096, 32, 32, 11008, ({"embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0},
                                               {"embed_dim": 1152, "depth": 27, "num_heads": 16,
                                                "mlp_ratio": 3.7362}), 32000, "bfloat16"),
}

# Training text for the tokenizer: the prompt template and LIBERO-style instructions.
CORPUS = [
    "In: What action should the robot take to {}?\nOut:",
    "pick up the alphabet soup and place it in the basket", "put the cream cheese in the bowl",
    "open the top drawer of the cabinet", "close the microwave", "turn on the stove",
    "put the bowl on the plate", "push the plate to the front of the stove", "move the gripper left",
    "move the gripper right", "lift the black bowl", "put both the alphabet soup and the tomato sauce in the basket",
    "place the ketchup on the shelf", "stack the red block on the green block", "go to the wine bottle",
    "put the wine bottle on top of the cabinet", "pick up the book and place it in the back compartment",
]

LIBERO_DEMO_STATS = {
    "action": {
        "mean": [0.0702, 0.135, -0.0452, 0.0042, -0.0053, -0.0054, 0.4697],
        "std": [0.2666, 0.4181, 0.4973, 0.0386, 0.0705, 0.0601, 0.4991],
        "max": [0.9375, 0.9375, 0.9375, 0.3557, 0.375, 0.375, 1.0],
        "min": [-0.8839, -0.9375, -0.9375, -0.2582, -0.3675, -0.3568, 0.0],
        "q01": [-0.5383, -0.8758, -0.9375, -0.0689, -0.1682, -0.1629, 0.0],
        "q99": [0.875, 0.9375, 0.9375, 0.128, 0.225, 0.18, 1.0],
        "mask": [True, True, True, True, True, True, False],  # the gripper stays in [-1, 1]
    },
    "proprio": {key: [0.0] * 7 for key in ("mean", "std", "max", "min", "q01", "q99")},
    "num_transitions": 66984,
    "num_trajectories": 454,
}


def build_tokenizer(unpadded_vocab: int) -> Tokenizer:
    """A Llama-style BPE (ids 0-2 = <unk> <s> </s>, a `▁` piece, BOS post-processor), then <PAD>."""
    if unpadded_vocab < 2 * N_ACTION_BINS:
        raise ValueError(f"unpadded vocab {unpadded_vocab} must be >= {2 * N_ACTION_BINS}")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_TOKEN, prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE_TOKEN, prepend_scheme="first")
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", SPACE_TOKEN]
    trainer = trainers.BpeTrainer(vocab_size=unpadded_vocab - N_ACTION_BINS, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    # Fill up to the unpadded size with pieces no text encodes to; the last 256 are the action tokens.
    raw = json.loads(tokenizer.to_str())
    vocab = raw["model"]["vocab"]
    for token_id in range(len(vocab), unpadded_vocab):
        vocab[f"<extra_{token_id}>"] = token_id
    tokenizer = Tokenizer.from_str(json.dumps(raw))
    tokenizer.add_special_tokens([PAD_TOKEN])
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", bos_id)])
    return tokenizer


def _tokenizer_files(out: Path, tokenizer: Tokenizer) -> None:
    tokenizer.save(str(out / "tokenizer.json"))
    special = {name: {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
               for name in (*SPECIAL_TOKENS, PAD_TOKEN)}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(tokenizer.token_to_id(n)): {**v, "special": True} for n, v in special.items()},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": PAD_TOKEN,
        "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 2048,
        "padding_side": "right", "tokenizer_class": "LlamaTokenizer",
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {"bos_token": special["<s>"], "eos_token": special["</s>"],
                                                  "unk_token": special["<unk>"], "pad_token": PAD_TOKEN})


def _preprocessor_config() -> dict:
    sizes = [[3, IMAGE_SIZE, IMAGE_SIZE]] * len(TIMM_IDS)
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "image_resize_strategy": "resize-naive",
        "input_sizes": sizes,
        "interpolations": ["bicubic"] * len(TIMM_IDS),
        "means": [list(mean) for mean, _ in BACKBONE_NORMALIZATION],
        "stds": [list(std) for _, std in BACKBONE_NORMALIZATION],
        "tvf_crop_params": [{"output_size": [IMAGE_SIZE, IMAGE_SIZE]}] * len(TIMM_IDS),
        "tvf_do_letterbox": False,
        "tvf_letterbox_fill": None,
        # torchvision stores the normalization as float32 tensors; the config keeps those values.
        "tvf_normalize_params": [{"inplace": False, "mean": [float(np.float32(v)) for v in mean],
                                  "std": [float(np.float32(v)) for v in std]} for mean, std in BACKBONE_NORMALIZATION],
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                               "size": [IMAGE_SIZE, IMAGE_SIZE]}] * len(TIMM_IDS),
        "use_fused_vision_backbone": True,
    }


def _model_config(size: TinySize, padded_vocab: int, pad_id: int) -> dict:
    return {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [IMAGE_SIZE, IMAGE_SIZE],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": N_ACTION_BINS,
        "norm_stats": {"libero_demo": LIBERO_DEMO_STATS},
        "output_projector_states": False,
        "pad_to_multiple_of": PAD_TO_MULTIPLE_OF,
        "pad_token_id": pad_id,
        "text_config": {
            "hidden_size": size.llm_hidden, "intermediate_size": size.llm_intermediate, "model_type": "llama",
            "num_attention_heads": size.llm_heads, "num_hidden_layers": size.llm_layers,
            "num_key_value_heads": size.llm_heads, "pad_token_id": pad_id, "torch_dtype": size.dtype,
            "vocab_size": padded_vocab,
        },
        "timm_model_ids": list(TIMM_IDS),
        "timm_override_act_layers": [None, None],
        "torch_dtype": size.dtype,
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
        "vision_backbone_overrides": [dict(v) for v in size.vits],
    }


def _random_weights(shapes: dict[str, tuple[int, ...]], seed: int, action_ids: slice, dtype: torch.dtype):
    """Seeded weights scaled to keep activations O(1): N(0, 1/fan_in) matrices, norms near 1;
    yields (name, tensor) one at a time in name order."""
    generator = torch.Generator().manual_seed(seed)
    for name, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator)
        if name.endswith("scale_factor"):
            value = 0.5 + 0.25 * noise.abs()
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.1 * noise
        elif name.endswith("bias"):
            value = 0.1 * noise
        elif name.endswith(("cls_token", "reg_token", "pos_embed", "embed_tokens.weight")):
            value = noise
        else:
            value = noise / float(np.sqrt(np.prod(shape[1:])))
        if name == "language_model.lm_head.weight":
            value[action_ids] *= ACTION_LOGIT_BOOST
        yield name, value.to(dtype).contiguous()


def unused_head_shapes(config: OpenVLAConfig) -> dict[str, tuple[int, ...]]:
    """Tensors official checkpoints carry but the forward pass skips (final norms, SigLIP's attn pool)."""
    dino, siglip = config.vision
    width, hidden = siglip.embed_dim, siglip.mlp_hidden
    shapes = {
        "vision_backbone.featurizer.norm.weight": (dino.embed_dim,),
        "vision_backbone.featurizer.norm.bias": (dino.embed_dim,),
        "vision_backbone.fused_featurizer.norm.weight": (width,),
        "vision_backbone.fused_featurizer.norm.bias": (width,),
    }
    pool = {"latent": (1, 1, width), "q.weight": (width, width), "q.bias": (width,), "kv.weight": (2 * width, width),
            "kv.bias": (2 * width,), "proj.weight": (width, width), "proj.bias": (width,), "norm.weight": (width,),
            "norm.bias": (width,), "mlp.fc1.weight": (hidden, width), "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (width, hidden), "mlp.fc2.bias": (width,)}
    shapes.update({f"vision_backbone.fused_featurizer.attn_pool.{k}": v for k, v in pool.items()})
    return shapes


def _unused_head_tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(seed + 1)
    for name, shape in sorted(shapes.items()):
        yield name, (0.1 * torch.randn(shape, generator=generator)).to(dtype)


def write_tiny_checkpoint(out: str | Path, seed: int = 0, size: str = "tiny", llm_layers: int | None = None) -> Path:
    """Write a random OpenVLA checkpoint of `size` ("tiny" for tests, "small" for benchmarks, "7b-widths"
    for export memory) to `out`; `llm_layers` replaces the size's number of LLM layers."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    dims = SIZES[size]
    if llm_layers is not None:
        if llm_layers < 1:
            raise ValueError(f"llm_layers must be >= 1, got {llm_layers}")
        dims = replace(dims, llm_layers=llm_layers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(dims.text_vocab)
    pad_id = tokenizer.token_to_id(PAD_TOKEN)
    padded_vocab = -(-tokenizer.get_vocab_size() // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    raw_config = _model_config(dims, padded_vocab, pad_id)
    config = OpenVLAConfig.from_dict(raw_config)
    with torch.device("meta"):  # shapes only: the weights are generated and written one at a time
        shapes = {name: tuple(t.shape) for name, t in OpenVLA(config).state_dict().items()}
    unused = unused_head_shapes(config)
    action_ids = slice(dims.text_vocab - N_ACTION_BINS, dims.text_vocab)
    dtype = getattr(torch, dims.dtype)
    specs = {name: (dtype, shape) for name, shape in [*sorted(shapes.items()), *sorted(unused.items())]}
    write_safetensors(out / "model.safetensors", specs,
                      lambda: chain(_random_weights(shapes, seed, action_ids, dtype),
                                    _unused_head_tensors(unused, seed, dtype)),
                      metadata={"format": "pt"})
    _write_json(out / "config.json", raw_config)
    _write_json(out / "preprocessor_config.json", _preprocessor_config())
    _write_json(out / "generation_config.json", {"_from_model_config": True,
                                                 "bos_token_id": tokenizer.token_to_id("<s>"),
                                                 "eos_token_id": tokenizer.token_to_id("</s>"), "pad_token_id": pad_id,
                                                 "transformers_version": "4.40.1"})
    _tokenizer_files(out, tokenizer)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
