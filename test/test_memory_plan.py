"""`openvla-ros convert-om --plan`: the device-memory plan per graph and in total, from config dims.
Checked against the weights the tiny export's ONNX graphs really carry, and computed for
OpenVLA-7B's dims (the official openvla-7b config: DINOv2 ViT-L/14 + SigLIP so400m/14 at 224 px,
Llama-2-7B with the vocabulary padded to 32064)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx

from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.memory_plan import GB, memory_plan

OPENVLA_7B_CONFIG = {
    "model_type": "openvla",
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "image_sizes": [224, 224],
    "use_fused_vision_backbone": True,
    "pad_to_multiple_of": 64,
    "pad_token_id": 32000,
    "n_action_bins": 256,
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
}
_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.INT64: 8}


def _float_initializer_bytes(path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) * _BYTES[t.data_type] for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


def test_plan_matches_the_exported_graphs(tiny_checkpoint, tiny_onnx_export):
    manifest = Manifest.load(tiny_onnx_export)
    plan = memory_plan(OpenVLAConfig.load(tiny_checkpoint), manifest.dtype, manifest.layout.max_text_tokens,
                       manifest.layout.action_dim)
    assert plan.layout == manifest.layout
    for graph in plan.graphs:
        spec = manifest.graphs[graph.name]
        io = [t for t in spec.inputs + spec.outputs if "kv" not in t.name]
        assert graph.activation_bytes == sum(t.nbytes for t in io), graph.name
        exported = _float_initializer_bytes(tiny_onnx_export / spec.file)
        # the LLM graphs also hold folded constant tables (rotary cos/sin, index vectors)
        assert exported * 0.98 <= graph.weight_bytes <= exported * 1.01, (graph.name, graph.weight_bytes, exported)
    kv = manifest.graphs["vla_llm"].output("present_kv").nbytes
    assert plan.kv_bytes == 2 * kv
    assert [g.name for g in plan.graphs] == list(manifest.graph_names)


def test_openvla_7b_fp16_fits_an_atlas_300i_pro_with_one_llm_copy():
    plan = memory_plan(OpenVLAConfig.from_dict(OPENVLA_7B_CONFIG), "fp16", max_text_tokens=40, action_dim=7)
    by_name = {g.name: g for g in plan.graphs}
    # Llama-2-7B layers + lm_head + the embedding table, once
    assert 13.3 * GB < by_name["vla_llm"].weight_bytes < 13.6 * GB
    assert 1.3 * GB < by_name["vision_backbone"].weight_bytes < 1.45 * GB
    assert 0.3 * GB < plan.kv_bytes < 0.33 * GB  # two 152 MiB KV buffers
    assert 15.0 * GB < plan.total_bytes <= 17 * GB < 24 * GB  # one 310P3 (Atlas 300I Pro): 24 GB
    assert 27.5 * GB < plan.two_graph_total_bytes < 29.0 * GB  # the earlier layout, a copy per graph


def test_cli_prints_the_plan(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(OPENVLA_7B_CONFIG))
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "convert-om", "--plan", "--config", str(config)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "vla_llm" in proc.stdout and "vla_decoder" not in proc.stdout
    assert "card with 24 GB: fits" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "convert-om", "--plan", "--config", str(config),
                           "--json"], capture_output=True, text=True, check=False)
    report = json.loads(proc.stdout)
    assert set(report["graphs"]) == {"vision_backbone", "projector", "vla_llm"}
    assert report["llm_weight_copies"] == 1 and report["total"]["all"] <= 17 * GB
    assert report["total"]["all"] == sum(report["total"][k] for k in ("weights", "activations", "kv"))
