"""`openvla-ros bench` on the tiny checkpoint: both CPU backends measured in their own processes,
latency percentiles and stages reported, zero KV bytes per decode step, torch absent from the
ONNX Runtime worker, and the OM backend reported as unavailable here (no CANN). No timing
assertions: the numbers depend on the machine."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_reports_both_cpu_backends(tiny_checkpoint, tiny_onnx_export, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "openvla_ros.cli", "bench", "--checkpoint", str(tiny_checkpoint),
         "--onnx", str(tiny_onnx_export), "--iterations", "3", "--warmup", "1", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["iterations"] == 3
    torch_result, ort_result = report["backends"]["torch"], report["backends"]["onnxruntime"]
    for result in (torch_result, ort_result):
        assert result["available"] is True
        assert result["latency_ms"]["n"] == 3 and 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"]
        assert {"preprocess", "vision", "prefill", "decode", "total"} <= set(result["stages_ms"])
        assert result["peak_rss_mb"] > 0
        assert result["instruction_check_ms"]["chars"] == 512 and result["instruction_check_ms"]["max"] > 0
    assert torch_result["torch_imported"] is True
    assert ort_result["torch_imported"] is False
    assert ort_result["action_token_ids"] == torch_result["action_token_ids"]
    transfers = ort_result["transfers"]
    assert transfers["decode_steps"] == len(ort_result["action_token_ids"]) - 1
    assert transfers["kv_cache_bytes_per_decode_step"] == 0
    assert transfers["bytes_per_decode_step"] == 16
    assert report["backends"]["om"]["available"] is False and report["backends"]["om"]["reason"]
    assert report["speedup_vs_torch_p50"]["onnxruntime"] > 0


def test_bench_rejects_unknown_backends(tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "openvla_ros.cli", "bench", "--checkpoint", str(tiny_checkpoint),
                           "--backends", "torch,tpu"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "unknown backends ['tpu']" in proc.stderr


def test_bench_runs_oft_side_by_side(tiny_checkpoint, tiny_onnx_export, tiny_oft_checkpoint, tiny_oft_onnx_export,
                                     tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "openvla_ros.cli", "bench", "--checkpoint", str(tiny_checkpoint), "--onnx",
         str(tiny_onnx_export), "--oft-checkpoint", str(tiny_oft_checkpoint), "--oft-onnx", str(tiny_oft_onnx_export),
         "--backends", "torch,onnxruntime", "--iterations", "2", "--warmup", "1", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    oft = report["oft"]["backends"]
    for backend in ("torch", "onnxruntime"):
        result = oft[backend]
        assert result["available"] is True and result["actions_per_chunk"] == 8
        assert result["latency_ms"]["n"] == 2 and result["actions_per_second"] > 0
        row = report["oft"]["side_by_side"][backend]
        assert row["oft_ms_per_chunk_p50"] == result["latency_ms"]["p50"]
        assert row["openvla_ms_per_action_p50"] == report["backends"][backend]["latency_ms"]["p50"]
    assert oft["torch"]["first_action"] == pytest.approx(oft["onnxruntime"]["first_action"], abs=1e-5)
    assert oft["onnxruntime"]["torch_imported"] is False
    assert oft["onnxruntime"]["transfers"]["to_host"] == {"normalized_actions": 8 * 7 * 4}
    row = report["oft"]["side_by_side"]["onnxruntime"]
    assert row["oft_bytes_per_chunk"] == oft["onnxruntime"]["transfers"]["bytes_per_chunk"]
