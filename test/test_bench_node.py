"""`openvla-ros bench-node`: the policy node end to end over DDS, on the tiny export."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")

from openvla_ros.commands.bench_node import parse_size, summarize  # noqa: E402


def test_bench_node_reports_latency_and_overhead_per_size(tiny_onnx_export, tmp_path):
    out = tmp_path / "bench_node.json"
    subprocess.run([sys.executable, "-m", "openvla_ros.cli", "bench-node", "--onnx", str(tiny_onnx_export),
                    "--sizes", "224x224", "640x480", "--frames", "8", "--warmup", "2", "--out", str(out)],
                   check=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime" and report["dds_profile"]
    assert set(report["sizes"]) == {"224x224", "640x480"}
    for size in report["sizes"].values():
        assert size["frames"] == 8 and size["lost"] == 0
        e2e, backend, overhead = size["end_to_end_ms"], size["backend_ms"], size["node_overhead_ms"]
        assert 0 < backend["p50"] < e2e["p50"]  # the backend time is a part of end to end
        assert overhead["mean"] == pytest.approx(e2e["mean"] - backend["mean"])
        assert 0 < overhead["p50"] <= overhead["p99"] <= overhead["max"]
        floor = size["transport_floor"]  # the same harness against a node that answers at once
        assert floor["frames"] == 8 and floor["lost"] == 0
        assert 0 < floor["end_to_end_ms"]["p50"] < e2e["p50"]
        assert set(floor["overhead_parts"]) == set(size["overhead_parts"])


def test_sizes_and_summary():
    assert parse_size("640x480") == (640, 480)
    for bad in ("640", "0x480", "axb"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
    assert summarize([1.0, 2.0, 3.0]) == {"p50": 2.0, "p99": pytest.approx(2.98), "mean": 2.0, "max": 3.0}
