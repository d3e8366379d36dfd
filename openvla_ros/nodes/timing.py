"""The `~/timing` message a node publishes with each action, for `openvla-ros bench-node`, and its
decoder.

One DiagnosticArray per action, stamped like the action (the source image's stamp): the backend's
wall time and other stage times in ms, and the wall-clock ns of frame received / inference start /
action published, from which bench-node splits end-to-end latency across processes.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from std_msgs.msg import Header

from openvla_ros.diagnostic_values import decode, encode


def timing_message(header: Header, node_name: str, *, backend_ms: float, frame_received_unix_ns: int,
                   inference_start_unix_ns: int, action_published_unix_ns: int,
                   **stage_ms: float) -> DiagnosticArray:
    values = {"backend_ms": f"{backend_ms:.4f}", **{k: f"{v:.4f}" for k, v in stage_ms.items()},
              "frame_received_unix_ns": str(frame_received_unix_ns),
              "inference_start_unix_ns": str(inference_start_unix_ns),
              "action_published_unix_ns": str(action_published_unix_ns)}
    return DiagnosticArray(header=header, status=[DiagnosticStatus(name=f"{node_name}: timing", values=encode(values))])


def timing_values(msg: DiagnosticArray) -> dict[str, float]:
    """A `timing_message` decoded: every value as a number (ms, or wall-clock ns for the *_unix_ns)."""
    if len(msg.status) != 1:
        raise ValueError(f"a timing message holds one status, this one {len(msg.status)}")
    numbers = {}
    for key, value in decode(msg.status[0]).items():
        try:
            numbers[key] = float(value)
        except ValueError:
            raise ValueError(f"timing value {key}={value!r} is not a number") from None
    return numbers
