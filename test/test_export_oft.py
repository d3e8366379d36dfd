"""OpenVLA-OFT export: static graphs on ONNX Runtime, exact against the torch reference, no torch at run time."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import SHARED_OFT_FIXTURE
from openvla_ros.cli import main
from openvla_ros.export import export_onnx
from openvla_ros.model.tiny_oft import write_tiny_oft_checkpoint
from openvla_ros.policy import load_policy
from openvla_ros.runtime.manifest import Manifest

INSTRUCTIONS = ("pick up the bowl", "put both the alphabet soup and the tomato sauce in the basket")


def _images(count: int, seed: int, size=(120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def test_manifest_describes_one_pass_without_a_cache(tiny_oft_onnx_export):
    manifest = Manifest.load(tiny_oft_onnx_export)
    assert manifest.family == "oft"
    assert manifest.graph_names == ("vision_backbone", "projector", "embedding", "proprio_projector", "oft_llm",
                                    "action_head")
    layout = manifest.chunk_layout
    assert (layout.chunk, layout.action_dim, layout.proprio_dim, layout.num_images) == (8, 7, 8, 2)
    llm = manifest.graphs["oft_llm"]
    length = 1 + 2 * 256 + 1 + 40 + 8 * 7 + 1
    assert [t.name for t in llm.inputs] == ["token_embeds", "patch_embeds_0", "patch_embeds_1", "proprio_embeds",
                                            "attention_mask", "position_ids"]
    assert llm.input("attention_mask").shape == (1, length)
    assert llm.output("action_hidden").shape == (1, 56, 32)
    assert manifest.graphs["action_head"].output("normalized_actions").shape == (1, 8, 7)
    ops = {node.op_type for node in onnx.load(str(tiny_oft_onnx_export / "oft_llm.onnx")).graph.node}
    assert "ScatterElements" not in ops  # nothing is written to a cache


def test_onnx_runtime_chunks_match_the_torch_reference(tiny_oft_checkpoint, tiny_oft_onnx_export):
    reference = load_policy("torch", tiny_oft_checkpoint)
    runtime = load_policy("onnxruntime", tiny_oft_onnx_export)
    try:
        for seed, instruction in enumerate(INSTRUCTIONS * 2):
            images = _images(2, seed, size=((224, 224), (480, 640))[seed % 2])
            state = np.random.default_rng(seed).uniform(-0.5, 0.5, 8)
            want = reference.predict_chunk(images, instruction, state)
            got = runtime.predict_chunk(images, instruction, state)
            assert got.prompt_ids == want.prompt_ids
            np.testing.assert_array_equal(got.normalized_proprio, want.normalized_proprio)
            np.testing.assert_allclose(got.actions, want.actions, rtol=0, atol=1e-5)
    finally:
        runtime.close()


def test_only_the_chunk_crosses_back_from_the_runtime(tiny_oft_onnx_export):
    policy = load_policy("onnxruntime", tiny_oft_onnx_export)
    try:
        policy.predict_chunk(_images(2, 0), INSTRUCTIONS[0], [0.0] * 8)
        transfers = policy.last_result.transfers
    finally:
        policy.close()
    assert transfers.to_host == {"normalized_actions": 8 * 7 * 4}
    assert transfers.to_runtime["pixel_values"] == 2 * 6 * 224 * 224 * 4  # one upload per image
    assert transfers.to_runtime["proprio"] == 8 * 4


def test_other_constants_export_and_match(tmp_path):
    """Action dim 5, no proprio (no proprio graph), three cameras, a chunk of 4."""
    checkpoint = write_tiny_oft_checkpoint(tmp_path / "odd", seed=3, action_dim=5, proprio_dim=0, head_blocks=1,
                                           unnorm_key="my_robot")
    export = export_onnx(checkpoint, tmp_path / "odd_onnx", max_text_tokens=24, progress=None, num_images=3, chunk=4)
    manifest = Manifest.load(export)
    assert "proprio_projector" not in manifest.graph_names
    assert not (export / "proprio_projector.onnx").exists()
    reference = load_policy("torch", checkpoint, num_images=3, chunk=4)
    runtime = load_policy("onnxruntime", export)
    try:
        images = _images(3, 5)
        want = reference.predict_chunk(images, INSTRUCTIONS[0])
        got = runtime.predict_chunk(images, INSTRUCTIONS[0])
        assert got.actions.shape == (4, 5)
        np.testing.assert_allclose(got.actions, want.actions, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="export holds at most 24"):
            runtime.predict_chunk(images, " ".join(["pick up the bowl"] * 8))
        with pytest.raises(ValueError, match="got 2 images; this OFT model takes 3"):
            runtime.predict_chunk(images[:2], INSTRUCTIONS[0])
    finally:
        runtime.close()


def test_oft_options_are_refused_for_an_openvla_checkpoint(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="apply to OpenVLA-OFT checkpoints only"):
        export_onnx(tiny_checkpoint, tmp_path / "x", progress=None, num_images=2)


RUNTIME_ONLY = """
import sys, numpy as np
from openvla_ros.policy import load_policy
policy = load_policy("onnxruntime", sys.argv[1])
chunk = policy.predict_chunk([np.zeros((224, 224, 3), np.uint8)] * 2, "open the drawer", [0.0] * 8)
policy.close()
print(chunk.actions.shape[0], "torch" in sys.modules)
"""


def test_runtime_path_never_imports_torch(tiny_oft_onnx_export):
    proc = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(tiny_oft_onnx_export)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    count, torch_loaded = proc.stdout.split()
    assert int(count) == 8 and torch_loaded == "False"


def test_verify_covers_oft_exports(tiny_oft_checkpoint, tiny_oft_onnx_export, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["verify", "--checkpoint", str(tiny_oft_checkpoint), "--onnx", str(tiny_oft_onnx_export),
                 "--random-images", "1", "--report", str(report_path)]) == 0
    out = capsys.readouterr().out
    assert "chunk 8 x 7" in out and "PASS" in out
    report = json.loads(report_path.read_text())
    assert report["model_family"] == "oft" and report["passed"]
    assert set(report["graphs"]) >= {"vision_backbone.patch_features_1", "proprio_embeds", "action_hidden"}
    assert report["max_action_abs_diff"] <= 1e-5


def test_predict_cli_runs_an_oft_export(tiny_oft_onnx_export, tmp_path, capsys):
    paths = []
    for name, image in zip(("agentview.png", "wrist.png"), _images(2, 7)):
        Image.fromarray(image).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    assert main(["predict", "--onnx", str(tiny_oft_onnx_export), "--image", paths[0], "--wrist-image", paths[1],
                 "--instruction", INSTRUCTIONS[0], "--state", *["0.1"] * 8, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "onnxruntime" and np.asarray(result["actions"]).shape == (8, 7)


def test_onnx_runtime_reproduces_the_official_oft_fixture(official_oft_fixture, official_oft_onnx_export):
    reference = json.loads((SHARED_OFT_FIXTURE / "reference.json").read_text())
    policy = load_policy("onnxruntime", official_oft_onnx_export)
    try:
        for case in reference["cases"]:
            images = [np.asarray(Image.open(official_oft_fixture / case[k]).convert("RGB"))
                      for k in ("agentview", "wrist")]
            chunk = policy.predict_chunk(images, case["instruction"], case["state"])
            assert chunk.prompt_ids[:-1] == case["prompt_ids"]
            np.testing.assert_allclose(chunk.actions, case["actions"], rtol=0, atol=1e-5)
    finally:
        policy.close()


def test_om_conversion_takes_the_graphs_the_manifest_lists(tiny_oft_onnx_export, tmp_path):
    from conftest import REPO_ROOT

    proc = subprocess.run(["/bin/bash", str(REPO_ROOT / "scripts" / "convert_onnx_to_om.sh"), "--onnx",
                           str(tiny_oft_onnx_export), "--out", str(tmp_path / "om"), "--dry-run", "--allow-fp32"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    converted = [line.split("--output=")[1].split()[0].rsplit("/", 1)[1]
                 for line in proc.stdout.splitlines() if line.startswith("atc ")]
    assert converted == list(Manifest.load(tiny_oft_onnx_export).graph_names)
    assert "--precision_mode_v2=origin" in next(line for line in proc.stdout.splitlines() if "oft_llm" in line)
