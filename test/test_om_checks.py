"""The checks a user runs on first contact with a 310P, run here through the pyACL contract double
(test/pyacl_double.py): `openvla-ros verify --om` (.om outputs against ONNX Runtime or the torch
reference, per graph and as token agreement, JSON report), `openvla-ros bench --backend om`
(per-stage times, bytes per decode step), and the policy node with `backend:=om` through
configure -> cleanup -> configure."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import numpy_helper

import pyacl_double as acl_double
from om_stand_in import shim_env
from openvla_ros.cli import main

GRAPH_OUTPUTS = {"vision_backbone.patch_features", "projector.patch_embeds", "vla_llm.prefill.logits",
                 "vla_llm.prefill.present_kv", "vla_llm.decode.logits", "vla_llm.decode.present_kv"}


def test_verify_om_against_onnxruntime(pyacl, tiny_om_export, tiny_onnx_export, tmp_path, capsys):
    path = tmp_path / "report.json"
    code = main(["verify", "--om", str(tiny_om_export), "--onnx", str(tiny_onnx_export), "--random-images", "1",
                 "--report", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(path.read_text())
    assert report["passed"] and report["token_agreement"] == 1.0 and report["cases_total"] == 2
    assert set(report["graphs"]) == GRAPH_OUTPUTS
    assert all(d["max_abs_diff"] <= 1e-5 for d in report["graphs"].values())
    assert report["criteria"]["min_token_agreement"] == 1.0  # an fp32 export
    assert "PASS" in out
    assert pyacl.outstanding()["device_allocations"] == 0


def test_verify_om_fails_when_a_graph_differs(pyacl, tiny_om_export, tiny_onnx_export, tmp_path, capsys):
    # a converted projector whose last layer's sign flipped: what a broken conversion would give
    variant = tmp_path / "om"
    subprocess.run(["cp", "-r", str(tiny_om_export), str(variant)], check=True)
    model = onnx.load(str(tiny_onnx_export / "projector.onnx"))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)) if "fc3" in t.name else 0)
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(tmp_path / "projector_flipped.onnx"))
    acl_double.write_om_stand_in(tmp_path / "projector_flipped.onnx", variant / "projector.om")
    code = main(["verify", "--om", str(variant), "--onnx", str(tiny_onnx_export), "--random-images", "1"])
    out = capsys.readouterr().out
    report = json.loads((variant / "verify_report.json").read_text())
    assert report["graphs"]["projector.patch_embeds"]["max_abs_diff"] > 1e-3
    assert "vision_backbone.patch_features" in report["graphs"]
    assert report["graphs"]["vision_backbone.patch_features"]["max_abs_diff"] <= 1e-5
    assert code == (0 if report["passed"] else 1)
    assert not report["passed"] and "FAIL" in out


def test_verify_om_against_the_torch_reference(pyacl, tiny_checkpoint, tiny_om_export, tmp_path):
    path = tmp_path / "report.json"
    assert main(["verify", "--om", str(tiny_om_export), "--checkpoint", str(tiny_checkpoint), "--random-images", "1",
                 "--report", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["passed"] and report["om"] == str(tiny_om_export) and report["token_agreement"] == 1.0


def test_bench_om_backend(tiny_om_export, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "bench", "--backend", "om", "--om",
                           str(tiny_om_export), "--iterations", "4", "--rounds", "2", "--warmup", "1",
                           "--out", str(out)],
                          env=shim_env(tmp_path / "shim"), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    om = json.loads(out.read_text())["backends"]["om"]
    assert om["available"], om
    assert om["latency_ms"]["n"] == 4
    assert {"vision_backbone", "vla_llm.prefill", "vla_llm.decode", "upload"} <= set(om["stages_ms"])
    transfers = om["transfers"]
    assert transfers["bytes_per_decode_step"] == 16 and transfers["kv_cache_bytes_per_decode_step"] == 0
    assert transfers["to_runtime_per_decode_step"] == {"cache_position": 8}
    assert om["torch_imported"] is False
