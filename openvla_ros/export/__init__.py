"""Export an OpenVLA checkpoint to five static-shape ONNX graphs + manifest (torch needed here only).

Graphs: `vision_backbone`, `projector`, `embedding`, `vla_prefill`, `vla_decoder` (see
`exporter` for their inputs and outputs, `llama_graphs` for the language-model graphs,
`onnx_graph` for the ATC compatibility checks); `openvla_ros.runtime` runs them.
"""
from openvla_ros.export.exporter import DEFAULT_MAX_TEXT_TOKENS, export_onnx

__all__ = ["DEFAULT_MAX_TEXT_TOKENS", "export_onnx"]
