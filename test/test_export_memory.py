"""Export memory: peak RSS of `openvla-ros export` per parameter, measured on child processes.

The tiny checkpoint goes through the same code (imports, tracing, checks) with almost no weights,
so the difference of the two peaks over the difference of the parameter counts is what each
further parameter costs: the figure that scales to 7B. Loading the whole checkpoint and holding
serialized graphs cost ~16 bytes per fp32 parameter; loading one graph's weights at a time and
streaming them to disk costs about one copy of them (4 bytes) and one tensor in flight.
"""
from __future__ import annotations

import json

from openvla_ros.cli import main
from openvla_ros.export.memory_bench import measure_export_memory, model_parameters

MAX_MARGINAL_BYTES_PER_FP32_PARAMETER = 8.0  # two fp32 copies


def test_export_peak_grows_by_about_one_copy_of_the_weights(tiny_checkpoint, small_checkpoint):
    tiny = measure_export_memory(tiny_checkpoint, dtype="fp32")
    small = measure_export_memory(small_checkpoint, dtype="fp32")
    assert small["parameters"] > 100 * tiny["parameters"]
    marginal = (small["peak_rss_bytes"] - tiny["peak_rss_bytes"]) / (small["parameters"] - tiny["parameters"])
    assert marginal <= MAX_MARGINAL_BYTES_PER_FP32_PARAMETER, (tiny, small)


def test_bench_export_reports_json_and_enforces_its_limit(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench-export", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--export-dir", str(tmp_path / "export")]) == 0
    report = json.loads(out.read_text())
    assert report["parameters"] == model_parameters(tiny_checkpoint)
    assert report["bytes_per_parameter"] == round(report["peak_rss_bytes"] / report["parameters"], 3)
    assert (tmp_path / "export" / "manifest.json").is_file()
    assert json.loads(capsys.readouterr().out) == report
    # The tiny model's peak is the interpreter and libraries, thousands of bytes per parameter.
    assert main(["bench-export", "--checkpoint", str(tiny_checkpoint), "--max-bytes-per-parameter", "2.5"]) == 1
    assert json.loads(capsys.readouterr().out)["within_limit"] is False
