"""`openvla-ros convert-om --plan` for OpenVLA-OFT: checked against the weights and buffers the tiny
OFT export's ONNX graphs really have, and computed for OpenVLA-OFT-7B's dims (openvla-7b's config,
the official LIBERO head and proprio projector)."""
from __future__ import annotations

import json
import subprocess
import sys

from test_memory_plan import OPENVLA_7B_CONFIG, _float_initializer_bytes

from openvla_ros.checkpoint import OpenVLAConfig
from openvla_ros.oft import ChunkLayout
from openvla_ros.runtime.manifest import Manifest
from openvla_ros.runtime.memory_plan import GB, memory_plan
from openvla_ros.runtime.oft_memory_plan import head_dims_of_export, oft_memory_plan

LIBERO = ChunkLayout(chunk=8, action_dim=7, proprio_dim=8, num_images=2)


def test_plan_matches_the_exported_oft_graphs(tiny_oft_checkpoint, tiny_oft_onnx_export):
    manifest = Manifest.load(tiny_oft_onnx_export)
    hidden, blocks = head_dims_of_export(tiny_oft_onnx_export)
    assert blocks == 2
    plan = oft_memory_plan(OpenVLAConfig.load(tiny_oft_checkpoint), manifest.dtype, manifest.layout.max_text_tokens,
                           manifest.chunk_layout, hidden, blocks)
    assert tuple(g.name for g in plan.graphs) == manifest.graph_names
    assert plan.pass_length == manifest.graphs["oft_llm"].input("attention_mask").shape[1]
    for graph in plan.graphs:
        spec = manifest.graphs[graph.name]
        assert graph.activation_bytes == sum(t.nbytes for t in spec.inputs + spec.outputs), graph.name
        exported = _float_initializer_bytes(tiny_oft_onnx_export / spec.file)
        # the pass also holds folded constant tables (rotary cos/sin, placeholder + stop embeddings)
        assert exported * 0.97 <= graph.weight_bytes <= exported * 1.01, (graph.name, graph.weight_bytes, exported)
    # each pipeline buffer once: the pixel buffer reused per camera, the projector writing into the
    # pass's patch_embeds_<i> (one per camera; no buffer of its own output name)
    specs = {t.name: t.nbytes for name in manifest.graph_names
             for t in manifest.graphs[name].inputs + manifest.graphs[name].outputs}
    del specs["patch_embeds"]
    assert {"patch_embeds_0", "patch_embeds_1"} <= set(specs)
    assert plan.pipeline_activation_bytes == sum(specs.values())


def test_openvla_oft_7b_fp16_fits_a_24_gb_card_with_one_llm_copy():
    config = OpenVLAConfig.from_dict(OPENVLA_7B_CONFIG)
    plan = oft_memory_plan(config, "fp16", max_text_tokens=40, chunk_layout=LIBERO)
    by_name = {g.name: g for g in plan.graphs}
    openvla = memory_plan(config, "fp16", max_text_tokens=40, action_dim=7)
    # the pass: Llama-2-7B's layers + norm, no lm_head (32064 x 4096 fp16 = 0.26 GB less than OpenVLA's)
    assert openvla.llm_weight_bytes - by_name["oft_llm"].weight_bytes == 32064 * 4096 * 2
    # the head: fc1 28672 -> 4096 dominates (0.23 GB), two 4096-wide blocks, fc2 -> 7
    assert 0.29 * GB < by_name["action_head"].weight_bytes < 0.31 * GB
    assert by_name["proprio_projector"].weight_bytes == (8 * 4096 + 4096 + 4096 * 4096 + 4096) * 2
    assert plan.pass_length == 1 + 2 * 256 + 1 + 40 + 56 + 1
    assert 14.5 * GB < plan.total_bytes < 15.5 * GB < 24 * GB
    assert plan.total_bytes < openvla.total_bytes  # less than OpenVLA, which also holds one LLM copy


def test_cli_prints_the_oft_plan(tmp_path, tiny_oft_onnx_export):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(OPENVLA_7B_CONFIG))
    base = [sys.executable, "-m", "openvla_ros.cli", "convert-om", "--plan"]
    proc = subprocess.run(base + ["--config", str(config), "--oft"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "OpenVLA-OFT" in proc.stdout and "action_head" in proc.stdout and "it fits" in proc.stdout
    proc = subprocess.run(base + ["--onnx", str(tiny_oft_onnx_export), "--json"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model_family"] == "oft" and report["oft"]["chunk"] == 8
    assert set(report["graphs"]) == set(Manifest.load(tiny_oft_onnx_export).graph_names)
    assert report["total"]["all"] == report["total"]["weights"] + report["total"]["activations"]
