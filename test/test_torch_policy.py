"""The torch reference model and policy on generated checkpoints: loading rules, decoding, make-tiny."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from openvla_ros.actions import dimension_labels
from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.model import OpenVLA
from openvla_ros.model.tiny import N_ACTION_BINS, write_tiny_checkpoint
from openvla_ros.model.torch_policy import TorchPolicy
from openvla_ros.policy import load_policy
from openvla_ros.processing import PromptTokenizer

RNG_IMAGE = np.random.default_rng(7).integers(0, 256, (240, 320, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def policy(tiny_checkpoint) -> TorchPolicy:
    return load_policy("torch", tiny_checkpoint)


def test_tiny_policy_predicts_a_7d_libero_action(policy):
    prediction = policy.predict(RNG_IMAGE, "Pick up the bowl")
    assert (policy.backend, policy.unnorm_key, policy.action_dim) == ("torch", "libero_demo", 7)
    assert prediction.action.shape == (7,) and prediction.action.dtype == np.float64
    assert len(prediction.action_token_ids) == 7
    vocab_end = policy.model.config.text_vocab_size - policy.model.config.pad_to_multiple_of
    # The generated checkpoint is made so that greedy decoding lands on action tokens.
    assert all(vocab_end - N_ACTION_BINS <= t < vocab_end for t in prediction.action_token_ids)
    assert set(prediction.timings_ms) >= {"preprocess", "vision", "prefill", "decode", "total"}
    assert dimension_labels(policy.action_dim)[-1] == "gripper"
    again = policy.predict(RNG_IMAGE, "Pick up the bowl")
    assert again.action_token_ids == prediction.action_token_ids


def test_actions_depend_on_image_and_instruction(policy):
    base = policy.predict(RNG_IMAGE, "pick up the bowl").action_token_ids
    assert policy.predict(RNG_IMAGE[::-1].copy(), "pick up the bowl").action_token_ids != base
    assert policy.predict(RNG_IMAGE, "close the microwave").action_token_ids != base


def test_kv_cache_decoding_equals_decoding_without_cache(policy):
    pixel_values = policy.images.preprocess(RNG_IMAGE)
    prompt_ids = policy.prompts.encode("open the drawer")
    cached, _ = policy.generate(pixel_values, prompt_ids, 7)
    model = policy.model
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(7):
            embeds = model.multimodal_embeddings(torch.from_numpy(pixel_values), torch.tensor([ids]))
            ids.append(int(model.language_model(inputs_embeds=embeds).logits[0, -1].argmax()))
    assert cached == ids[len(prompt_ids):]


def test_vision_backbone_returns_concatenated_patch_features(policy):
    config = policy.model.config
    with torch.inference_mode():
        features = policy.model.vision_backbone(torch.zeros(1, 6, 224, 224))
    assert features.shape == (1, 256, config.vision_dim)
    with pytest.raises(ValueError, match=r"expected \[B, 6, H, W\]"):
        policy.model.vision_backbone(torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("image, instruction, problem", [
    (np.zeros((224, 224), np.uint8), "go", "2-D"),
    (np.zeros((224, 224, 4), np.uint8), "go", "4 channels"),
    (np.zeros((224, 224, 3), np.float64), "go", "dtype"),
    (np.zeros((0, 0, 3), np.uint8), "go", "empty"),
    (np.zeros((224, 224, 3), np.uint8), " ", "whitespace"),
])
def test_bad_inputs_are_value_errors(policy, image, instruction, problem):
    with pytest.raises(ValueError, match=problem):
        policy.predict(image, instruction)


def test_bfloat16_weights_on_request(tiny_checkpoint):
    policy = TorchPolicy.load(tiny_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in policy.model.parameters()} == {torch.bfloat16}
    prediction = policy.predict(RNG_IMAGE, "pick up the bowl")
    assert len(prediction.action_token_ids) == 7 and prediction.action.dtype == np.float64
    with pytest.raises(ValueError, match="dtype 'int8'"):
        TorchPolicy.load(tiny_checkpoint, dtype="int8")


def test_unknown_unnorm_key_lists_the_keys(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"'bridge_orig'.*\['libero_demo'\]"):
        TorchPolicy.load(tiny_checkpoint, unnorm_key="bridge_orig")


def _copy_with_weights(src, dst, edit) -> None:
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors")


def test_missing_and_unexpected_keys_are_named(tiny_checkpoint, tmp_path):
    def drop_and_add(state):
        del state["projector.fc3.bias"]
        state["vision_backbone.featurizer.head.weight"] = torch.zeros(2)

    _copy_with_weights(tiny_checkpoint, tmp_path / "bad", drop_and_add)
    with pytest.raises(ValueError, match=r"missing keys \['projector.fc3.bias'\].*unexpected keys "
                                         r"\['vision_backbone.featurizer.head.weight'\]"):
        OpenVLA.from_pretrained(tmp_path / "bad")


def test_unused_official_heads_are_optional(tiny_checkpoint, tmp_path):
    def drop_unused(state):
        unused = ("featurizer.norm.weight", "featurizer.norm.bias")
        for name in [n for n in state if ".attn_pool." in n or n.endswith(unused)]:
            del state[name]

    _copy_with_weights(tiny_checkpoint, tmp_path / "lean", drop_unused)
    OpenVLA.from_pretrained(tmp_path / "lean")


def test_shape_mismatch_with_config_is_named(tiny_checkpoint, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["vision_backbone_overrides"][1]["mlp_ratio"] = 3.0
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    mismatch = r"fused_featurizer.blocks.0.mlp.fc1.weight: checkpoint \(48, 24\) vs model \(72, 24\)"
    with pytest.raises(ValueError, match=mismatch):
        OpenVLA.from_pretrained(tmp_path / "ckpt")


def test_make_tiny_writes_the_official_layout(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert names >= {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}
    config = OpenVLAConfig.load(tiny_checkpoint)
    assert config.text_vocab_size % 64 == 0 and config.pad_to_multiple_of == 64
    assert config.norm_stats["libero_demo"]["action"]["mask"] == [True] * 6 + [False]
    tokenizer = PromptTokenizer.from_pretrained(tiny_checkpoint)
    vocab_end = config.text_vocab_size - config.pad_to_multiple_of
    assert vocab_end >= 2 * N_ACTION_BINS
    assert tokenizer.tokenizer.token_to_id("<PAD>") == config.pad_token_id == vocab_end
    ids = tokenizer.encode("put the wine bottle on top of the cabinet")
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.space_token_id
    assert max(ids) < vocab_end - N_ACTION_BINS  # text never encodes to action tokens


def test_make_tiny_is_seeded(tiny_checkpoint, tmp_path):
    same = write_tiny_checkpoint(tmp_path / "same", seed=0)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    reference = (tiny_checkpoint / "model.safetensors").read_bytes()
    assert (same / "model.safetensors").read_bytes() == reference
    assert (other / "model.safetensors").read_bytes() != reference
    assert (same / "tokenizer.json").read_text() == (tiny_checkpoint / "tokenizer.json").read_text()


def test_bfloat16_checkpoint_runs_in_float32(tiny_checkpoint, tmp_path):
    # Official releases store bfloat16 weights; the reference model upcasts them on load.
    def to_bf16(state):
        for name in state:
            state[name] = state[name].to(torch.bfloat16)

    _copy_with_weights(tiny_checkpoint, tmp_path / "bf16", to_bf16)
    policy = TorchPolicy.load(tmp_path / "bf16")
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
    assert len(policy.predict(RNG_IMAGE, "pick up the bowl").action_token_ids) == 7


def test_full_size_architecture_has_openvla_7b_parameter_count(official_fixture):
    """Without overrides the timm ids give the real dims: with the unused heads, openvla-7b's 7,541,237,184."""
    from openvla_ros.model.tiny import unused_head_shapes

    raw = json.loads((official_fixture / "ckpt" / "config.json").read_text())
    del raw["vision_backbone_overrides"]
    raw["text_config"] = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                          "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                          "model_type": "llama", "pad_token_id": 32000}
    config = OpenVLAConfig.from_dict(raw)
    with torch.device("meta"):
        model = OpenVLA(config)
    used = sum(p.numel() for p in model.parameters())
    unused = sum(math.prod(shape) for shape in unused_head_shapes(config).values())
    assert used + unused == 7_541_237_184
