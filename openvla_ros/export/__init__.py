"""Export an OpenVLA checkpoint to three ONNX graphs + manifest (torch needed here only).

Graphs: `vision_backbone`, `projector`, `vla_llm` (prefill and decode in one graph with two
sequence gears; see
`exporter` for their inputs and outputs, `llama_graphs` for the language-model graphs,
`onnx_graph` for the ATC compatibility checks); `openvla_ros.runtime` runs them.
"""
from openvla_ros.export.exporter import DEFAULT_MAX_TEXT_TOKENS, export_onnx

__all__ = ["DEFAULT_MAX_TEXT_TOKENS", "export_onnx"]
