"""Exporting whole OpenVLA checkpoints: the five graphs are static, ATC-compatible and described by
the manifest; the ONNX pipeline reproduces the official fixture's 50 cases and the torch
reference; `verify` passes a good export, fails a wrong one, and reports fp16 agreement."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from openvla_ros.export.onnx_graph import check_graph
from openvla_ros.export.verify import default_cases, verify_export
from openvla_ros.runtime import load_runtime_policy
from openvla_ros.runtime.manifest import GRAPH_NAMES, Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official_onnx_export(official_fixture, tmp_path_factory):
    """The official fixture exported fp32 with room for its longest prompt (34 text tokens,
    more than the default 31): exactly-fitting prompts exercise the layout's boundary."""
    from openvla_ros.export import export_onnx

    cases = json.loads((official_fixture / "reference.json").read_text())["cases"]
    longest = max(len(case["prompt_ids"]) - 1 for case in cases)
    return export_onnx(official_fixture / "ckpt", tmp_path_factory.mktemp("official_onnx") / "export",
                       max_text_tokens=longest, progress=None)


@pytest.fixture(scope="module")
def other_tiny_onnx_export(tmp_path_factory):
    """An export of a different random checkpoint (seed 1): `verify` against seed 0 must fail."""
    from openvla_ros.export import export_onnx
    from openvla_ros.model.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("other_tiny")
    return export_onnx(write_tiny_checkpoint(root / "ckpt", seed=1, size="tiny"), root / "export", progress=None)


@pytest.mark.parametrize("export", ["tiny_onnx_export", "official_onnx_export"])
def test_export_graphs_are_static_atc_compatible_and_in_the_manifest(export, request):
    directory = request.getfixturevalue(export)
    manifest = Manifest.load(directory)
    assert manifest.dtype == "fp32" and manifest.opset <= 17
    assert manifest.layout.length == 1 + manifest.layout.num_patches + manifest.layout.max_text_tokens
    assert manifest.layout.num_patches == 256
    assert GRAPH_NAMES == ("vision_backbone", "projector", "vla_llm")
    for name in GRAPH_NAMES:
        spec = manifest.graphs[name]
        # checker, static shapes (at each shape gear), ATC op set
        report = check_graph(directory / f"{name}.onnx", spec.sequence_gears)
        assert (report.inputs, report.outputs, report.sequence_inputs) == (spec.inputs, spec.outputs,
                                                                           spec.sequence_inputs)
        assert not {"Trilu", "ScatterND", "Shape"} & set(report.op_types)
    llm = manifest.graphs["vla_llm"]
    # one LLM graph, two gears: the prefill's L and a decode step's 1
    assert llm.sequence_gears == (manifest.layout.length, 1)
    assert llm.sequence_inputs == ("input_ids", "attention_mask", "position_ids")
    assert not manifest.graphs["vision_backbone"].sequence_gears
    kv = llm.output("present_kv")
    assert kv.shape[4] == manifest.layout.kv_capacity
    assert llm.input("past_kv").shape == kv.shape
    assert manifest.graphs["vision_backbone"].input("pixel_values").shape == (1, *manifest.image_shape)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json"):
        assert name in manifest.processor_files and (directory / name).is_file()
    assert manifest.norm_stats and manifest.action_tokens.n_action_bins == 256


def test_official_fixture_all_cases_reproduced_by_onnx_runtime(official_fixture, official_onnx_export):
    reference = json.loads((official_fixture / "reference.json").read_text())["cases"]
    policies = {}
    try:
        for case in reference:
            key = case["unnorm_key"]
            if key not in policies:
                policies[key] = load_runtime_policy("onnxruntime", official_onnx_export, unnorm_key=key)
            image = np.asarray(Image.open(official_fixture / case["image"]).convert("RGB"))
            prediction = policies[key].predict(image, case["instruction"])
            where = f"{case['image']} / {case['instruction']!r} / {key}"
            assert prediction.prompt_ids == case["prompt_ids"], where
            assert prediction.action_token_ids == case["action_token_ids"], where
            np.testing.assert_allclose(prediction.action, case["action"], atol=1e-5, rtol=0, err_msg=where)
    finally:
        for policy in policies.values():
            policy.close()


def test_verify_passes_the_official_fp32_export(official_fixture, official_onnx_export):
    report = verify_export(official_fixture / "ckpt", official_onnx_export, default_cases(random_images=2))
    assert report["passed"], report
    assert report["token_agreement"] == 1.0 and report["max_action_abs_diff"] <= 1e-5
    assert set(report["graphs"]) == {"vision_backbone.patch_features", "projector.patch_embeds",
                                     "vla_llm.prefill.logits", "vla_llm.prefill.present_kv",
                                     "vla_llm.decode.logits", "vla_llm.decode.present_kv"}
    assert all(d["max_abs_diff"] < 1e-3 for d in report["graphs"].values())


def test_verify_cli_writes_report_and_fails_on_a_foreign_export(tiny_checkpoint, tiny_onnx_export,
                                                                  other_tiny_onnx_export, tmp_path):
    good = tmp_path / "good.json"
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "verify", "--checkpoint", str(tiny_checkpoint),
                           "--onnx", str(tiny_onnx_export), "--random-images", "1", "--report", str(good)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "vla_llm.decode.logits" in proc.stdout
    assert json.loads(good.read_text())["passed"] is True
    bad = tmp_path / "bad.json"
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "verify", "--checkpoint", str(tiny_checkpoint),
                           "--onnx", str(other_tiny_onnx_export), "--random-images", "1", "--report", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(bad.read_text())
    assert report["passed"] is False and report["graphs"]["vision_backbone.patch_features"]["max_abs_diff"] > 1e-3


def test_fp16_export_reports_diffs_and_token_agreement(tiny_checkpoint, tmp_path):
    from openvla_ros.export import export_onnx

    out = export_onnx(tiny_checkpoint, tmp_path / "fp16", dtype="fp16", progress=None)
    manifest = Manifest.load(out)
    assert manifest.graphs["vla_llm"].input("past_kv").dtype == "float16"
    assert manifest.graphs["vision_backbone"].input("pixel_values").dtype == "float16"
    report = verify_export(tiny_checkpoint, out, default_cases(random_images=1), min_token_agreement=0.0)
    assert 0.0 <= report["token_agreement"] <= 1.0 and report["criteria"]["action_atol"] is None
    # fp16 rounding shows up, but stays small relative to the activations
    assert 0 < report["graphs"]["projector.patch_embeds"]["max_abs_diff"] < 0.05


def test_export_cli_with_custom_text_budget_and_prompt_limit(tiny_checkpoint, tmp_path):
    out = tmp_path / "short"
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "export", "--checkpoint", str(tiny_checkpoint),
                           "--out", str(out), "--max-text-tokens", "12"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "[3/3] vla_llm" in proc.stdout  # progress output
    manifest = Manifest.load(out)
    assert manifest.layout.max_text_tokens == 12
    policy = load_runtime_policy("onnxruntime", out)
    try:
        with pytest.raises(ValueError, match="--max-text-tokens"):
            policy.predict(np.zeros((224, 224, 3), np.uint8), "pick up the alphabet soup and place it in the basket "
                                                              "next to the red bowl on the left side of the table")
    finally:
        policy.close()


def test_export_rejects_bad_arguments(tiny_checkpoint, tmp_path):
    from openvla_ros.export import export_onnx

    with pytest.raises(ValueError, match="dtype 'bf16'"):
        export_onnx(tiny_checkpoint, tmp_path / "x", dtype="bf16", progress=None)
    with pytest.raises(ValueError, match="max_text_tokens must be >= 1"):
        export_onnx(tiny_checkpoint, tmp_path / "x", max_text_tokens=0, progress=None)
