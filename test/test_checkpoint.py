"""config.json parsing and the weight-file policy: safetensors single/sharded, pickle refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from openvla_ros.checkpoint import OpenVLAConfig, ViTSpec, find_weight_files, load_state_dict


def _official_config(official_fixture) -> dict:
    return json.loads((official_fixture / "ckpt" / "config.json").read_text())


def test_real_checkpoints_get_the_full_dims_of_their_timm_ids(official_fixture):
    raw = _official_config(official_fixture)
    del raw["vision_backbone_overrides"]
    dino, siglip = OpenVLAConfig.from_dict(raw).vision
    assert (dino.embed_dim, dino.depth, dino.num_heads, dino.mlp_hidden) == (1024, 24, 16, 4096)
    assert (dino.patch_size, dino.num_registers, dino.class_token, dino.num_prefix_tokens) == (14, 4, True, 5)
    assert dino.layer_scale and dino.gelu_approximate == "none"
    assert (siglip.embed_dim, siglip.depth, siglip.num_heads, siglip.mlp_hidden) == (1152, 27, 16, 4304)
    assert (siglip.num_prefix_tokens, siglip.layer_scale, siglip.gelu_approximate) == (0, False, "none")
    assert siglip.num_patches == 256


def test_overrides_replace_the_vit_dims(official_fixture):
    config = OpenVLAConfig.load(official_fixture / "ckpt")
    assert [(s.embed_dim, s.depth, s.num_heads, s.mlp_hidden) for s in config.vision] == [(32, 3, 2, 128),
                                                                                           (24, 3, 2, 48)]
    assert config.vision_dim == 56 and config.llm_dim == 32
    assert (config.text_vocab_size, config.pad_to_multiple_of, config.pad_token_id) == (32064, 64, 32000)
    assert sorted(config.norm_stats) == ["libero_object_no_noops", "toy_two_dim"]


def test_config_errors_name_the_problem(official_fixture):
    raw = _official_config(official_fixture)
    with pytest.raises(ValueError, match="model_type"):
        OpenVLAConfig.from_dict({**raw, "model_type": "llama"})
    with pytest.raises(ValueError, match="unknown keys"):
        OpenVLAConfig.from_dict({**raw, "vision_backbone_overrides": [{"width": 3}, {}]})
    with pytest.raises(ValueError, match="unsupported timm model id"):
        ViTSpec.from_timm_id("resnet50", 224)


def _shard(single_file, out_dir, n_shards: int) -> dict:
    """Split a model.safetensors into HF-style shards + model.safetensors.index.json; returns the tensors."""
    tensors = load_file(single_file)
    names = sorted(tensors)
    shards = {f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors": names[i::n_shards] for i in range(n_shards)}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, out_dir / shard)
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def test_sharded_checkpoint_loads_the_same_tensors(official_fixture, tmp_path):
    tensors = _shard(official_fixture / "ckpt" / "model.safetensors", tmp_path, n_shards=2)
    names = sorted(tensors)
    assert [p.name for p in find_weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors"]
    loaded = load_state_dict(tmp_path)
    assert sorted(loaded) == names
    assert all(np.array_equal(loaded[n], tensors[n]) for n in names)


def test_sharded_official_checkpoint_reproduces_the_reference(official_fixture, tmp_path):
    from openvla_ros.model.torch_policy import TorchPolicy

    sharded = tmp_path / "sharded"
    shutil.copytree(official_fixture / "ckpt", sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    _shard(official_fixture / "ckpt" / "model.safetensors", sharded, n_shards=3)
    assert len(find_weight_files(sharded)) == 3
    key = "libero_object_no_noops"
    cases = [c for c in json.loads((official_fixture / "reference.json").read_text())["cases"]
             if c["unnorm_key"] == key]
    policy = TorchPolicy.load(sharded, unnorm_key=key)
    for case in cases[:3]:
        image = np.asarray(Image.open(official_fixture / case["image"]).convert("RGB"))
        assert policy.predict(image, case["instruction"]).action_token_ids == case["action_token_ids"]


def test_missing_shard_is_named(official_fixture, tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002"):
        find_weight_files(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt"])
def test_pickle_weights_are_refused_unless_allowed(tmp_path, name):
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / name)
    with pytest.raises(ValueError, match="pickle.*--allow-pickle"):
        find_weight_files(tmp_path)
    loaded = load_state_dict(tmp_path, allow_pickle=True)
    assert loaded["w"].tolist() == [1.0, 1.0]


def test_no_weights_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights"):
        find_weight_files(tmp_path)
