"""The torch reference implementation of OpenVLA (vision backbone, projector, Llama) and its policy."""
from openvla_ros.model.openvla import OpenVLA

__all__ = ["OpenVLA"]
