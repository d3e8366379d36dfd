"""The policy node given damaged model files: configure fails with the same one line the CLI prints
(the file, what is wrong, what to do), shows it in /diagnostics, and leaves the node unconfigured
and running, so that configure succeeds once the files are sound; `verify_checksums` finds
same-size corruption that sizes cannot."""
from __future__ import annotations

import shutil

import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402

from openvla_ros.node_process import wait_until  # noqa: E402
from ros_probe import Probe  # noqa: E402
from test_policy_node import PolicyNodeHarness, start_node  # noqa: E402

REMEDY = "re-copy the export directory, or re-export it (`openvla-ros export`)"


def test_damaged_export_fails_configure_with_one_line_and_recovers(tiny_onnx_export, tmp_path):
    export = shutil.copytree(tiny_onnx_export, tmp_path / "export")
    graph = export / "vla_llm.onnx"
    sound = graph.read_bytes()
    graph.write_bytes(sound[:1000])
    with Probe("files_probe", namespace="files") as probe:
        node = start_node(export, "onnxruntime", tmp_path, namespace="files")
        try:
            h = PolicyNodeHarness(probe, node, "/files/policy_node")
            assert wait_until(lambda: h._own_status() is not None, 30.0), node.log_text()[-3000:]
            truncated = h.diagnostics()
            assert node.running()

            # Same size, other bytes: sizes pass, only the checksum finds it.
            graph.write_bytes(sound[:-64] + bytes(64))
            assert h.set(verify_checksums=True)[0].successful
            assert not h.change_state(Transition.TRANSITION_CONFIGURE)
            corrupted = h.diagnostics()

            graph.write_bytes(sound)
            assert h.change_state(Transition.TRANSITION_CONFIGURE)
            configured = h.diagnostics()
        finally:
            node.stop()
    expected = f"configure failed: {graph}: truncated: expected {len(sound)} bytes, got 1000; {REMEDY}"
    assert truncated["last_error"] == expected
    assert truncated["state"] == "unconfigured" and truncated["_level"] == DiagnosticStatus.ERROR
    assert expected in node.log_text() and "Traceback" not in node.log_text()
    assert corrupted["last_error"].startswith(f"configure failed: {graph}: checksum mismatch: sha256 ")
    assert corrupted["last_error"].endswith(REMEDY) and corrupted["state"] == "unconfigured"
    assert configured["state"] == "inactive"
